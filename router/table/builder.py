"""The manual overrides and the TableBuilder: Tables built from route commands, incrementally.

A change to one service must not rebuild everything: TableBuilder keeps the compiled targets per service
and per route key `(host, path)` and rebuilds only the keys a change touches, copying only the touched
HostRoutes; everything else is shared with the previous Table (router/table/routes.py explains the
shape). The last step, the Table from each changed key's final targets, is router/table/assemble.py,
which the proxy workers run on the same `changes` (router/table/replica.py). The manual (override) list is re-applied to each rebuilt key, in order, after the service
targets. A bad command is reported (LineError with source and line) and skipped; fabio drops the table.

Past 400 lines on purpose: the per-service compile (grouping, fabio's order, weights, the batch path of
router/table/target.py) and the incremental rebuild share one cache of compiled targets per service and per
key; split apart, each half would have to know the other's invariants.
"""

from __future__ import annotations

import gc
from collections.abc import Collection, Mapping, Sequence
from operator import attrgetter

from router.table.assemble import assemble
from router.table.index import glob_regex
from router.table.route import fabio_weights, weigh
from router.table.routecmd import LineError, RouteCmd
from router.table.routes import Table
from router.table.target import CmdError, Target, hostpath, make_target, make_targets, refixed

__all__ = ["TableBuilder"]


def _err(cmd: RouteCmd, reason: str) -> LineError:
    return LineError(cmd.source, cmd.line, str(cmd), reason)


Key = tuple[str, str]


def _check_glob(cmd: RouteCmd, matcher: str) -> None:
    """With the glob matcher a path that won't compile is an error of its command (as in fabio)."""
    if matcher == "glob":
        glob_regex(hostpath(cmd.src)[1], "/")


class _Manual:
    """The compiled override list: per-key commands, commands that apply to every key, and keys touched."""

    def __init__(self, cmds: Sequence[RouteCmd], matcher: str = "prefix") -> None:
        self.cmds = tuple(cmds)
        self.errors: list[LineError] = []
        self.by_key: dict[Key, list[tuple[int, RouteCmd, Target | None]]] = {}
        self.every: list[tuple[int, RouteCmd, Target | None]] = []
        for i, cmd in enumerate(self.cmds):
            entry: tuple[int, RouteCmd, Target | None]
            if cmd.op == "add":
                try:
                    _check_glob(cmd, matcher)
                    entry = (i, cmd, make_target(cmd))
                except CmdError as e:
                    self.errors.append(_err(cmd, str(e)))
                    continue
                self.by_key.setdefault(hostpath(cmd.src), []).append(entry)
            elif cmd.op == "del" and (cmd.tags or not cmd.src):
                if not cmd.tags and not cmd.service:
                    self.errors.append(_err(cmd, "route del needs a service or tags"))
                    continue
                self.every.append((i, cmd, None))
            elif cmd.op in ("del", "weight"):
                if not cmd.src:
                    self.errors.append(_err(cmd, "source must not be empty"))
                    continue
                self.by_key.setdefault(hostpath(cmd.src), []).append((i, cmd, None))
            else:
                self.errors.append(_err(cmd, f"unknown command {cmd.op!r}"))

    def apply(self, key: Key, targets: Sequence[Target], errors: list[LineError]) -> Sequence[Target]:
        """Apply the commands relevant to ``key`` in order; returns ``targets`` itself when none are."""
        own = self.by_key.get(key)
        if not own and not self.every:
            return targets
        seq = sorted((own or []) + self.every, key=lambda e: e[0]) if own and self.every else own or self.every
        targets = list(targets)
        for _, cmd, tgt in seq:
            if cmd.op == "add":
                assert tgt is not None
                if not any(_same(t, tgt) for t in targets):
                    targets.append(tgt)
            elif cmd.op == "del":
                targets = [t for t in targets if not _del_matches(cmd, t)]
            else:
                hits = [i for i, t in enumerate(targets) if (not cmd.service or t.service == cmd.service)
                        and set(cmd.tags).issubset(t.tags)]
                if not hits:
                    errors.append(_err(cmd, "no route matches"))
                    continue
                w = cmd.weight / len(hits)
                for i in hits:
                    targets[i] = refixed(targets[i], w)
        return targets


def _service_order(contrib: Mapping[str, object]) -> list[str]:
    """Services of one route in fabio's order: its `route add <svc> ...` lines sorted in reverse.

    Service names have no spaces, so comparing two services' lines is comparing ``name + " "``.
    """
    return sorted(contrib, key=lambda n: n + " ", reverse=True)


def _same(a: Target, b: Target) -> bool:
    return a.service == b.service and a.url == b.url and a.fixed_weight == b.fixed_weight and a.tags == b.tags


def _del_matches(cmd: RouteCmd, t: Target) -> bool:
    if cmd.service and t.service != cmd.service:
        return False
    if cmd.tags:
        return set(cmd.tags).issubset(t.tags)
    return not cmd.dst or t.url == cmd.dst




def _fabio_order(group: list[RouteCmd]) -> bool:
    """Sort one route's commands of one service in fabio's order: descending `route add` text. True when
    they differ only in their destinations (the usual case: one service's instances, one tag).

    Then comparing the destinations is comparing the texts, as long as no destination holds a character
    that sorts before the space that follows it in the text; else the texts are compared
    (RouteCmd.__str__ costs more than the rest of a target's build). The checks run per group, in C
    (attrgetter, set, one regex over the joined destinations), not per command in Python (issue 18)."""
    if len(group) == 1:
        return True
    dsts = list(map(_dst, group))
    text = "".join(dsts)  # no character at or below the space: printable, and no space (both in C)
    if all(dsts) and len(set(map(_shape, group))) == 1 and text.isprintable() and " " not in text:
        group.sort(key=_dst, reverse=True)
        return True
    group.sort(key=str, reverse=True)
    return False


_dst = attrgetter("dst")
_op_src = attrgetter("op", "src")
_shape = attrgetter("src", "weight", "tags", "opts")  # what a uniform group's commands share


_UNIFORM: dict[tuple[float, int], float] = {}


def _uniform_weight(fixed: float, n: int) -> float:
    """fabio's weight of each of ``n`` targets with the same fixed weight, worked out once per (fixed, n)."""
    if n == 1:
        return 1.0
    w = _UNIFORM.get((fixed, n))
    if w is None:
        if len(_UNIFORM) >= 10000:
            _UNIFORM.clear()
        w = _UNIFORM[fixed, n] = fabio_weights([fixed] * n)[0]
    return w


def _compile(group: list[RouteCmd], compiled: dict[tuple, Target] | None, uniform: bool) -> tuple[Target, ...] | None:
    """One route's targets from one service's commands (in fabio's order), each built once with its final
    weight; None when a command does not compile (then `_compile_reporting` reports it). `compiled` shares
    the Targets of a service's instances between its routes (None: the service has one route);
    `uniform`: the commands differ only in their destinations (`_fabio_order`)."""
    if uniform and compiled is None:  # fabio's identity (service, url, fixed weight, tags) is the destination
        kept = group
        if len(group) > 1 and len(set(map(_dst, group))) < len(group):
            first: dict[str, RouteCmd] = {}
            for c in group:
                first.setdefault(c.dst, c)
            kept = list(first.values())
        w = _uniform_weight(group[0].weight, len(kept))
        try:  # twins left out have the same destination and options as the one kept: they compile alike
            return tuple(make_targets(kept, w))
        except CmdError:
            return None
    if uniform:
        by_dst: dict[str, RouteCmd] = {}
        for cmd in group:
            by_dst.setdefault(cmd.dst, cmd)
        kept = list(by_dst.values())
        ws = fabio_weights([group[0].weight] * len(kept)) if len(kept) > 1 else (1.0,)
    else:
        distinct: dict[tuple, RouteCmd] = {}
        for cmd in group:
            distinct.setdefault((cmd.service, cmd.dst, cmd.weight, cmd.tags), cmd)
        kept = list(distinct.values())
        ws = fabio_weights([c.weight for c in kept]) if len(kept) > 1 else (1.0,)
    out: list[Target] = []
    try:
        if compiled is None:
            out = [make_target(cmd, w) for cmd, w in zip(kept, ws, strict=True)]
        else:
            for cmd, w in zip(kept, ws, strict=True):
                ck = (cmd.service, cmd.dst, cmd.weight, cmd.tags, cmd.opts, w)
                t = compiled.get(ck)
                if t is None:
                    t = compiled[ck] = make_target(cmd, w)
                out.append(t)
        if len(kept) < len(group):  # a twin left out must compile too, or it is reported
            ids = set(map(id, kept))
            for cmd in group:
                if id(cmd) not in ids:
                    make_target(cmd)
    except CmdError:
        return None
    return tuple(out)


def _compile_reporting(group: list[RouteCmd], errors: list[LineError]) -> tuple[Target, ...]:
    """`_compile` for a group with a bad command: each bad one is reported and left out before
    de-duplicating, so it never displaces a valid twin."""
    kept: dict[tuple, RouteCmd] = {}
    for cmd in group:
        try:
            make_target(cmd)
        except CmdError as e:
            errors.append(_err(cmd, str(e)))
            continue
        kept.setdefault((cmd.service, cmd.dst, cmd.weight, cmd.tags), cmd)
    if not kept:
        return ()
    ws = fabio_weights([c.weight for c in kept.values()]) if len(kept) > 1 else (1.0,)
    return tuple(make_target(cmd, w) for cmd, w in zip(kept.values(), ws, strict=True))


class TableBuilder:
    """Keeps the commands per service and the override commands; builds Tables incrementally.

    State: ``_svc[name]`` = that service's compiled targets by route key; ``_contrib[key][name]`` = the
    same, indexed by key.  A key's base targets are the contributions of its services in service-name
    order (so the result doesn't depend on update order); then the manual list is applied to the key.
    ``update`` rebuilds only the keys of changed services (all keys when the manual list changed) and
    copies only the touched ``HostRoutes`` objects; everything else is shared with the previous Table.

    ``update`` returns *all* current errors (every service's build errors and the manual list's), not
    only those caused by this call, so the caller can simply display them.
    """

    def __init__(self, *, matcher: str = "prefix", glob_matching: bool = True) -> None:
        if matcher not in ("prefix", "iprefix", "glob"):
            raise ValueError(f"unknown matcher {matcher!r}")
        self.matcher = matcher
        self.glob_matching = glob_matching
        self._cmds: dict[str, tuple[RouteCmd, ...]] = {}
        self._svc: dict[str, dict[Key, tuple[Target, ...]]] = {}
        self._svc_errors: dict[str, list[LineError]] = {}
        self._contrib: dict[Key, dict[str, tuple[Target, ...]]] = {}
        self._manual = _Manual(())
        self._manual_key_errors: dict[Key, list[LineError]] = {}
        self._table = Table(matcher, glob_matching)
        # the last update's resolved targets per changed key, and whether it rebuilt the whole table: what
        # the proxy workers assemble their tables from (router/run/workers.py)
        self.changes: dict[Key, tuple[Target, ...]] = {}
        self.fresh = False

    @property
    def table(self) -> Table:
        return self._table

    def commands(self, name: str) -> tuple[RouteCmd, ...]:
        """Service `name`'s current commands (empty: none)."""
        return self._cmds.get(name, ())

    def update(self, services: Mapping[str, Sequence[RouteCmd] | None] | None = None,
               manual: Sequence[RouteCmd] | None = None) -> tuple[Table, list[LineError]]:
        """Apply changed services (name -> full add list; None/[] = gone) and/or a new manual list.

        The garbage collector is paused meanwhile: a build allocates many objects but no cycles, and
        generation-2 collections over a large live table would otherwise dominate the build time.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._update(services, manual)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _update(self, services: Mapping[str, Sequence[RouteCmd] | None] | None,
                manual: Sequence[RouteCmd] | None) -> tuple[Table, list[LineError]]:
        self.changes, self.fresh = {}, False
        affected: set[Key] = set()
        for name, cmds in (services or {}).items():
            new = tuple(cmds or ())
            if self._cmds.get(name, ()) == new and (name in self._cmds or not new):
                continue
            affected.update(self._set_service(name, new))
        full = False
        if manual is not None and tuple(manual) != self._manual.cmds:
            self._manual = _Manual(manual, self.matcher)
            full = True
        if full:
            affected = set(self._contrib) | set(self._manual.by_key)
            self._manual_key_errors = {}
            self._table = self._rebuild(Table(self.matcher, self.glob_matching), affected, fresh=True)
        elif affected:
            self._table = self._rebuild(self._table, affected, fresh=False)
        return self._table, self.errors()

    def errors(self) -> list[LineError]:
        out = [e for name in sorted(self._svc_errors) for e in self._svc_errors[name]]
        manual = list(self._manual.errors)
        for errs in self._manual_key_errors.values():
            manual += errs
        manual.sort(key=lambda e: (e.source, e.line))
        return out + manual

    def _set_service(self, name: str, cmds: tuple[RouteCmd, ...]) -> Collection[Key]:
        old = self._svc.pop(name, None) or {}
        for key in old:
            c = self._contrib[key]
            del c[name]
            if not c:
                del self._contrib[key]
        self._svc_errors.pop(name, None)
        if not cmds:
            self._cmds.pop(name, None)
            return old.keys()
        self._cmds[name] = cmds
        # Group by key, de-duplicating on fabio's identity (service, url, fixed weight, tags): the first in
        # fabio's order is kept (it adds the service lines sorted in reverse, so a route's targets are in
        # descending order of their `route add` text). A service's instances usually share their sources:
        # each source's key (and its glob check) is worked out once.
        grouped: dict[Key, list[RouteCmd]] = {}
        errors: list[LineError] = []
        c0 = cmds[0]
        if c0.op == "add" and len(set(map(_op_src, cmds))) == 1:  # one route (the usual case): grouped in C
            try:
                _check_glob(c0, self.matcher)
                grouped[hostpath(c0.src)] = list(cmds)
                cmds = ()
            except CmdError:
                pass  # the loop below reports each command
        keys: dict[str, Key | str] = {}  # source -> its key, or why its path does not compile
        for cmd in cmds:
            if cmd.op != "add":
                errors.append(_err(cmd, "only 'route add' is allowed in service commands"))
                continue
            key = keys.get(cmd.src)
            if key is None:
                try:
                    _check_glob(cmd, self.matcher)
                    key = hostpath(cmd.src)
                except CmdError as e:
                    key = str(e)
                keys[cmd.src] = key
            if isinstance(key, str):
                errors.append(_err(cmd, key))
                continue
            grouped.setdefault(key, []).append(cmd)
        # The same instance may appear on several routes: each distinct target is compiled once per weight and
        # the (immutable) Target objects are shared between routes.
        compiled: dict[tuple, Target] | None = {} if len(grouped) > 1 else None
        new: dict[Key, tuple[Target, ...]] = {}
        for key, group in grouped.items():
            ts = _compile(group, compiled, _fabio_order(group))
            if ts is None:  # a line does not compile: report it, and leave it out before de-duplicating
                ts = _compile_reporting(group, errors)
            if ts:
                new[key] = ts
        self._svc[name] = new
        if errors:
            self._svc_errors[name] = errors
        for key, ts in new.items():
            self._contrib.setdefault(key, {})[name] = ts
        return set(old).union(new) if old else new.keys()  # a service's first build: nothing to merge

    def _targets(self, key: Key, errors: list[LineError]) -> tuple[Target, ...]:
        c = self._contrib.get(key)
        if not c:
            base: Sequence[Target] = ()
        elif len(c) == 1:
            (base,) = c.values()  # already weighed as a lone service
        else:
            base = [t for name in _service_order(c) for t in c[name]]
        out = self._manual.apply(key, base, errors)
        if out is base and len(c or ()) == 1:
            return out  # type: ignore[return-value]
        return weigh(out) if out else ()

    def _rebuild(self, old: Table, affected: set[Key], fresh: bool) -> Table:
        """Resolve each affected key's final targets, keep them as `changes`, and assemble the next Table
        from them (router/table/assemble.py, which a proxy worker runs on the same `changes`)."""
        key_errors = self._manual_key_errors
        contrib = self._contrib
        changes: dict[Key, tuple[Target, ...]] = {}
        if not self._manual.by_key and not self._manual.every:
            for key in affected:
                c = contrib.get(key)
                if not c:
                    changes[key] = ()
                elif len(c) == 1:
                    (changes[key],) = c.values()
                else:
                    changes[key] = tuple(weigh([x for name in _service_order(c) for x in c[name]]))
        else:
            errs: list[LineError] = []
            for key in affected:
                changes[key] = tuple(self._targets(key, errs))
                if errs:
                    key_errors[key] = errs
                    errs = []
                elif key_errors:
                    key_errors.pop(key, None)
        self.changes, self.fresh = changes, fresh
        return assemble(None if fresh else old, changes, self.matcher, self.glob_matching)
