"""Taking over what a previous worker left running.

``adopt(records, specs, ops, clock, log)`` turns the ledger's records (this
boot's only) into supervised Processes, each proven ours by the kernel
start time of its pid (a recycled pid has another), so nothing is started
twice and no stranger is ever signalled:

- one whose pid is gone loses its pid file (which names that pid);
- a running process whose definition is unchanged is adopted as it is;
- one whose definition changed while the worker was down is adopted with
  its old stop settings, then restarted with the new definition;
- one removed from CONFIG meanwhile is adopted, then stopped;
- a daemon the previous worker was still starting (only its launcher is
  recorded) is waited for again (its pid file) instead of launched twice.
"""

from diprocd.process import Process


def adopt(records, specs, ops, clock, log):
    """{name: Process} for the records that are still alive (see above)."""
    wanted = {spec.name: spec for spec in specs}
    procs = {}
    for name, record in records.items():
        if record.pid is None and record.launcher is not None:
            procs[name] = _adopt_starting(name, record, wanted.get(name), ops,
                                          clock, log)
            continue
        if record.pid is None or record.ticks is None:
            continue
        if ops.start_ticks(record.pid) != record.ticks:
            log.info("%s: pid %d from the last run is gone or is another "
                     "program now: not adopted", name, record.pid)
            # Else its pid file names that pid for good (a start rewrites it).
            ops.remove_pid_file(record.stop_spec(name), naming=record.pid)
            continue
        spec = wanted.get(name)
        changed = spec is not None and record.fingerprint != spec.fingerprint()
        proc = _process(spec if spec is not None and not changed
                        else record.stop_spec(name), record, ops, clock)
        procs[name] = proc
        proc.adopt(record.pid, record.ticks)
        if spec is None:
            log.info("%s: adopted pid %d, removed from CONFIG while the "
                     "worker was down: stopping it", name, record.pid)
            proc.removing = True
        elif changed:
            log.info("%s: adopted pid %d, definition changed while the "
                     "worker was down: restarting it", name, record.pid)
            proc.replace(spec)
        else:
            log.info("%s: adopted pid %d", name, record.pid)
    return procs


def _process(spec, record, ops, clock):
    proc = Process(spec, ops, clock)
    proc.starts = record.starts
    proc.started_at = record.started_at
    return proc


def _adopt_starting(name, record, spec, ops, clock, log):
    """A daemon the last worker launched and was still waiting for: wait for
    its pid file again rather than launching a second one."""
    launcher_pid, launcher_ticks = record.launcher
    changed = spec is None or record.fingerprint != spec.fingerprint()
    proc = _process(record.stop_spec(name) if changed else spec, record, ops,
                    clock)
    alive = launcher_pid is not None and ops.start_ticks(
        launcher_pid) == launcher_ticks
    proc.adopt_starting(launcher_pid if alive else None, launcher_ticks)
    log.info("%s: the last worker was starting this daemon: waiting for its "
             "pid file", name)
    if spec is None:
        proc.removing = True
    elif changed:
        proc.replace(spec)
    return proc
