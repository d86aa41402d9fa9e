from router.run.cli import main

if __name__ == "__main__":  # not when a spawned helper process (registry/consul/dump.py) imports this module
    raise SystemExit(main())
