"""The launcher script on the pod and the shell commands that start, watch and stop it.

Files in the run directory (all written as tmp + mv, so a reader never sees half a file):
`pid` (launcher pid = its session and process group), `trainer_pid` (the `timeout`
process, leader of the trainer's own process group), `heartbeat` (unix seconds, every
5 s), `trainer.out` (trainer stdout+stderr; for a participant's script, pip's output, the
script's own going to `train.log`), `setup_failed` (pip failed), `exit_code`. The directory `launched` is
made with mkdir, which is atomic: only the first launch attempt of a run gets past it.
"""

import re
import shlex
from dataclasses import dataclass

from worker.remote import Remote

LAUNCH_SCRIPT = "launch.sh"
# A provider's pod-side stop (ends the pod at its deadline); started detached by launch.sh.
WATCHDOG_SCRIPT = "watchdog.sh"
# Exit codes of `timeout`: the trainer hit the wall-clock deadline (TERM, then KILL).
TIMEOUT_EXIT_CODES = (124, 137)

_SCRIPT = """\
#!/usr/bin/env bash
# Starts one Caddie run; the worker writes it and launches it detached (setsid).
set -u
run={run_dir}
cd "$run" || exit 1
echo $$ > pid.tmp && mv pid.tmp pid
{watchdog}( while true; do date +%s > heartbeat.tmp && mv heartbeat.tmp heartbeat; sleep 5; done ) &
heartbeat=$!
finish() {{
  kill $heartbeat 2>/dev/null
  cd "$run" && echo $1 > exit_code.tmp && mv exit_code.tmp exit_code
  exit 0
}}
cd {cwd} || finish 1
{setup}{command} > {output} 2>&1 < /dev/null &
trainer=$!
echo $trainer > "$run/trainer_pid.tmp" && mv "$run/trainer_pid.tmp" "$run/trainer_pid"
wait $trainer
finish $?
"""
# Installs requirements.txt before the script; stays in the launcher's process group
# (--foreground), so stopping the run stops pip too. Its output goes to trainer.out.
_SETUP = """\
{command} >> "$run/trainer.out" 2>&1 < /dev/null
code=$?
if [ $code != 0 ]; then touch "$run/{marker}"; finish $code; fi
"""
SETUP_FAILED = "setup_failed"  # written by launch.sh when pip install fails
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Set to the run directory in the environment of everything the trainer or script starts:
# stop() finds what a run left behind by it (and by a working folder inside the run
# directory), including children that left its process groups with setsid.
RUN_MARKER = "PGOLF_RUN_DIR"

# Signal both process groups (launcher's and trainer's); $1 is the signal.
_SIGNAL_GROUPS = 'for f in pid trainer_pid; do [ -f $f ] && kill -{sig} -- -$(cat $f) 2>/dev/null; done'
# A group counts as alive while it has a member that is not a zombie: where PID 1 does not
# reap orphans (many containers), a dead launcher stays a zombie and kill -0 still succeeds.
_ANY_ALIVE = (
    "alive=0; for f in pid trainer_pid; do [ -f $f ] || continue; g=$(cat $f); "
    "if command -v ps >/dev/null; then "
    "ps -eo pgid=,stat= | awk -v g=$g '$1==g && $2 !~ /^Z/ {f=1} END {exit !f}' && alive=1; "
    "else kill -0 -- -$g 2>/dev/null && alive=1; fi; done"
)


def launch_script(*, run_dir: str, argv: list[str], deadline_s: float, cwd: str | None = None,
                  env: dict[str, str] | None = None, output: str = "trainer.out",
                  setup: list[str] | None = None, setup_deadline_s: float = 0.0,
                  pythonpath: str | None = None, cpu_threads: int | None = None,
                  watchdog: bool = False) -> str:
    """launch.sh: in `cwd` (default: the run dir), run `argv` under `timeout` at `deadline_s`
    with its stdout+stderr in `output` (relative to the run dir), after `setup` (pip) if given.

    `env` reaches the command (and `setup`) through `env NAME=VALUE ...`, every word quoted
    with shlex.quote: a name is checked to be one, a value can never become shell syntax.
    """
    q = shlex.quote
    prefix = [f"OMP_NUM_THREADS={int(cpu_threads)}"] if cpu_threads else []
    if pythonpath is not None:
        prefix.append(f"PYTHONPATH={q(pythonpath)}")
    prefix += ["PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", f"{RUN_MARKER}={q(run_dir)}"]
    if env:
        prefix += ["env", *env_words(env)]
    command = " ".join([*prefix, "timeout", "--kill-after=30", f"{int(deadline_s)}s", *map(q, argv)])
    setup_block = ""
    if setup:
        pip = [*prefix, "timeout", "--foreground", "--kill-after=30", f"{int(setup_deadline_s)}s", *map(q, setup)]
        setup_block = _SETUP.format(command=" ".join(pip), marker=SETUP_FAILED)
    # Its own session: stopping the trainer's groups must not stop the pod's last stop.
    # stop() spares its session (watchdog_pid), which outlives the run on purpose.
    guard = (f"setsid bash {WATCHDOG_SCRIPT} </dev/null >watchdog.out 2>&1 &\n"
             "echo $! > watchdog_pid.tmp && mv watchdog_pid.tmp watchdog_pid\n") if watchdog else ""
    return _SCRIPT.format(run_dir=q(run_dir), cwd=q(cwd or run_dir), setup=setup_block,
                          command=command, output=f'"$run"/{q(output)}', watchdog=guard)


def env_words(env: dict[str, str]) -> list[str]:
    """NAME=VALUE words for `env`, each quoted; ValueError for a name that is not a plain name
    or a value holding NUL (which no environment can carry)."""
    words = []
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"env.{name[:80]!r}: not a variable name")
        if "\x00" in value:
            raise ValueError(f"env.{name}: NUL in the value")
        words.append(shlex.quote(f"{name}={value}"))
    return words


def launch(remote: Remote, run_dir: str, *, user: str | None = None) -> bool:
    """Start launch.sh detached with a clean environment; False if this run was launched before.

    `user`: the account it runs as (the caller is root): the run directory becomes its own
    and its HOME, and setpriv drops every privilege and group of the caller.
    """
    q = shlex.quote
    home, switch = '"$HOME"', ""
    if user is not None:
        home = q(run_dir)
        switch = (f"setpriv --reuid={q(user)} --regid={q(user)} --clear-groups --no-new-privs "
                  "--inh-caps=-all --bounding-set=-all ")
    # `&` must apply to the redirected setsid command alone: a backgrounded list would keep
    # a subshell holding this command's stdout open for as long as the trainer runs.
    command = (
        f"cd {q(run_dir)} || exit 1\n"
        "mkdir launched 2>/dev/null || { echo again; exit 0; }\n"
        + (f"chown -R {q(user)}: . && chmod 0700 . || exit 1\n" if user is not None else "")
        + f'setsid env -i PATH="$PATH" HOME={home} LANG=C.UTF-8 {switch}bash {LAUNCH_SCRIPT} '
        "</dev/null >/dev/null 2>&1 &\n"
        "echo started"
    )
    result = remote.run(command, timeout_s=30)
    if "started" in result.stdout:
        return True
    if "again" in result.stdout:
        return False
    raise RuntimeError(f"launch failed: exit {result.exit_code}: {result.stderr.strip()[-300:]}")


@dataclass(frozen=True)
class TrainerState:
    state: str  # "starting" (no pid yet) | "alive" | "exited" | "gone" (died without exit code)
    exit_code: int | None = None


def trainer_state(remote: Remote, run_dir: str) -> TrainerState:
    # exit_code is asked again after the liveness test: the launcher writes it and only then
    # exits, so a launcher that ends between the two tests is not taken for a vanished one.
    # (Asking exit_code first keeps an unreaped zombie launcher from looking alive.)
    exited = 'echo "exited $(cat exit_code)"'
    command = (
        f"cd {shlex.quote(run_dir)} || exit 3; "
        f"if [ -f exit_code ]; then {exited}; "
        'elif [ -f pid ] && kill -0 "$(cat pid)" 2>/dev/null; then echo alive; '
        f"elif [ -f exit_code ]; then {exited}; "
        "elif [ -f pid ]; then echo gone; else echo starting; fi"
    )
    words = remote.run(command, timeout_s=30).stdout.split()
    if words[:1] == ["exited"] and len(words) == 2 and words[1].lstrip("-").isdigit():
        return TrainerState("exited", int(words[1]))
    if words[:1] in (["alive"], ["starting"]):
        return TrainerState(words[0])
    return TrainerState("gone")


# Processes of the run (not this shell, not the pod's watchdog session): its marker in their
# environment, or a working folder inside the run directory. Prints their pids. $r is the
# run directory. One grep and one find over /proc, so a sweep costs the same on a busy host.
# Field 4 after the ") " that ends a process's name in /proc/<pid>/stat is its session.
_LEFTOVERS = (
    'w=$(cat "$r/watchdog_pid" 2>/dev/null); '
    f'{{ grep -lzx -F "{RUN_MARKER}=$r" /proc/[0-9]*/environ 2>/dev/null; '
    'find /proc -mindepth 2 -maxdepth 2 -name cwd \\( -lname "$r" -o -lname "$r/*" \\) 2>/dev/null; } '
    '| cut -d/ -f3 | sort -u | while read -r n; do [ "$n" = $$ ] && continue; '
    '[ -n "$w" ] && [ "$(sed "s/.*) //" /proc/$n/stat 2>/dev/null | cut -d" " -f4)" = "$w" ] && continue; '
    'echo $n; done'
)


def stop(remote: Remote, run_dir: str, *, grace_s: float = 5.0) -> list[int]:
    """TERM both process groups, wait up to grace_s for them to go, then KILL what is left,
    and then every process the run started elsewhere (see RUN_MARKER) until none is left.

    Returns the pids still alive after that (empty when the run is wholly gone)."""
    ticks = max(1, int(grace_s * 10))
    run = shlex.quote(run_dir)
    command = (
        f"r={run}; leftovers() {{ {_LEFTOVERS}; }}\n"
        f"if cd {run} 2>/dev/null; then {_SIGNAL_GROUPS.format(sig='TERM')}; "
        f"for i in $(seq {ticks}); do {_ANY_ALIVE}; [ $alive = 0 ] && break; sleep 0.1; done; "
        f"{_SIGNAL_GROUPS.format(sig='KILL')}; cd /; fi\n"
        "for i in $(seq 50); do left=$(leftovers); [ -z \"$left\" ] && exit 0; "
        "kill -KILL $left 2>/dev/null; sleep 0.1; done\n"
        "echo $(leftovers)"
    )
    out = remote.run(command, timeout_s=grace_s + 60).stdout.split()
    return [int(word) for word in out if word.isdigit()]


def last_lines(remote: Remote, run_dir: str, files: tuple[str, ...], *, lines: int = 40) -> str:
    """The last lines of each file, each under a '== name ==' header."""
    parts = [f"echo '== {name} =='; tail -n {lines} {shlex.quote(name)} 2>/dev/null" for name in files]
    return remote.run(f"cd {shlex.quote(run_dir)} && {{ {'; '.join(parts)}; }}", timeout_s=30).stdout
