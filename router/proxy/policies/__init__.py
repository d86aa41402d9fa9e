"""Traffic policies of issue 19: compression, header rewriting, header routing, rate limits, sticky sessions.

The options are parsed with the table (router/table/policyopts.py); these modules act on requests.
"""
