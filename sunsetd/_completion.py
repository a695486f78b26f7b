"""Shell completion scripts (bash, zsh) for `sunsetctl` and `sunsetd`, generated from their argparse parsers.

Run at build time only (setup.py's build_py writes them into the package as sunsetd/completions/), never
imported by the daemon or by sunsetctl: completing costs the shell no Python start. The parsers are
walked generically (subcommands at any depth and their aliases, options, whether an option takes a
value, choices, positionals), so a new subcommand or option is completed as soon as the package is
built again. Values: choices as given; `--profile` (and a positional named profile) gets the profile
names on the search path at completion time ($SUNSETD_PROFILE_PATH, ./profiles, /etc/sunsetd/profiles)
plus those the package ships, or a file; one named signal a signal name; an option or positional whose name ends in `dir` a directory,
one naming a file or path a file. Agent names are not completed (that would need the daemon).

    python -m sunsetd._completion OUTDIR [--profiles DIR]

writes OUTDIR/sunsetctl.bash, sunsetd.bash, _sunsetctl and _sunsetd.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

# (program, the function of sunsetd.cli that builds its parser)
PROGRAMS = (("sunsetctl", "build_parser"), ("sunsetd", "build_daemon_parser"))
_REPEATABLE = (argparse._AppendAction, argparse._AppendConstAction, argparse._CountAction)
_TOKEN = re.compile(r"^[A-Za-z0-9_.,+@%/=-]+$")  # a choice a completion word can hold unquoted


@dataclass
class Arg:
    """An option (strings non-empty) or a positional, as completion sees it."""

    strings: list[str]
    name: str  # metavar or dest
    help: str
    takes_value: bool
    nargs: object
    kind: str  # "choices", "profile", "signal", "dir", "file", "command" or "" (nothing to offer)
    choices: list[str] = field(default_factory=list)
    repeatable: bool = False


@dataclass
class Command:
    path: tuple[str, ...]  # () for the program itself
    help: str
    options: list[Arg]
    positionals: list[Arg]  # in order; a subcommand slot is kind "command"
    subcommands: dict[str, "Command"]  # canonical name -> command
    aliases: dict[str, str]  # every name (canonical ones too) -> canonical name


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if text == argparse.SUPPRESS:
        return ""
    params = dict(vars(action), prog=prog)
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    try:
        text = text % params
    except (KeyError, TypeError, ValueError):
        pass
    return " ".join(text.split())


def _kind(action: argparse.Action) -> str:
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return "choices"
    dest = (action.dest or "").lower().replace("-", "_")
    meta = str(action.metavar or "").lower().replace("-", "_")
    if "profile" in (dest, meta):
        return "profile"
    if "signal" in (dest, meta):
        return "signal"
    if dest.endswith("dir") or meta.endswith("dir") or "directory" in meta:
        return "dir"
    if isinstance(action.type, argparse.FileType) or any(w in (dest, meta) for w in ("file", "path")) \
            or dest.endswith(("_file", "_path")):
        return "file"
    return ""


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help: str = "") -> Command:
    """The command tree of a parser."""
    cmd = Command(path, help, [], [], {}, {})
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {ca.dest: (ca.help or "") for ca in action._choices_actions}
            canonical: dict[int, str] = {}
            for name, sub in action.choices.items():  # canonical names come before their aliases
                if helps.get(name) == argparse.SUPPRESS:
                    continue
                if id(sub) not in canonical:
                    canonical[id(sub)] = name
                    cmd.subcommands[name] = walk(sub, path + (name,), " ".join(helps.get(name, "").split()))
                cmd.aliases[name] = canonical[id(sub)]
            cmd.positionals.append(Arg([], "command", "", True, None, "command"))
            continue
        if action.help == argparse.SUPPRESS:
            continue
        kind = _kind(action)
        choices = [str(c) for c in action.choices] if kind == "choices" else []
        name = action.metavar if isinstance(action.metavar, str) else (action.dest or "").replace("_", " ")
        arg = Arg(list(action.option_strings), str(name or ""), _help(action, parser.prog), action.nargs != 0,
                  action.nargs, kind, [c for c in choices if _TOKEN.match(c)],
                  isinstance(action, _REPEATABLE))
        (cmd.options if action.option_strings else cmd.positionals).append(arg)
    return cmd


def _commands(cmd: Command) -> list[Command]:
    out = [cmd]
    for sub in cmd.subcommands.values():
        out += _commands(sub)
    return out


def _uses_profiles(cmd: Command) -> bool:
    return any(a.kind == "profile" for c in _commands(cmd) for a in c.options + c.positionals)


def _slots(cmd: Command) -> tuple[list[Arg | None], Arg | None]:
    """Positional words in order (one Arg per word) and the Arg that takes every word after them."""
    slots: list[Arg | None] = []
    for p in cmd.positionals:
        if p.nargs in (argparse.ZERO_OR_MORE, argparse.ONE_OR_MORE, argparse.REMAINDER):
            return slots, p
        slots += [p] * (p.nargs if isinstance(p.nargs, int) else 1)
    return slots, None


def _fn(prog: str) -> str:
    return re.sub(r"\W", "_", prog)


def _q(words) -> str:
    return shlex.quote(" ".join(words))


# ---- bash ---------------------------------------------------------------------------------------------


def _bash_key(path: tuple[str, ...], word: str | None = None) -> str:
    """The case pattern for a command path ("/", "/status", ...), optionally followed by a word."""
    key = "/" + "/".join(path)
    return shlex.quote(key if word is None else f"{key} {word}")


def _bash_value(fn: str, arg: Arg, cur: str = '"$3"') -> str:
    if arg.kind == "command":
        return ""
    if arg.kind == "choices":
        return f"COMPREPLY=($(compgen -W {_q(arg.choices)} -- {cur}))"
    if arg.kind == "profile":
        return f"__{fn}_profiles {cur}"
    if arg.kind == "signal":
        return (f"if [[ {cur} == SIG* ]]; then COMPREPLY=($(compgen -A signal -- {cur})); "
                f"else local -a sigs=($(compgen -A signal -- SIG{cur})); COMPREPLY=(\"${{sigs[@]#SIG}}\"); fi")
    if arg.kind == "dir":
        return f"compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- {cur}))"
    if arg.kind == "file":
        return f"compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- {cur}))"
    return ""


def bash(prog: str, builder: str, root: Command, profiles: list[str]) -> str:
    fn = _fn(prog)
    cmds = _commands(root)
    out = [f"# bash completion for {prog}: subcommands, options and their values.",
           f"# Generated from sunsetd.cli.{builder}() by sunsetd._completion when the package was built; do not edit.",
           ""]
    if _uses_profiles(root):
        out += [f"__{fn}_profiles() {{  # CUR: profile names on the search path, or a profile file",
                f"    local cur=$1 d f; local -a dirs names=({' '.join(shlex.quote(p) for p in profiles)})",
                '    IFS=: read -ra dirs <<< "${SUNSETD_PROFILE_PATH:-}"',
                "    dirs+=(./profiles /etc/sunsetd/profiles)",
                '    for d in "${dirs[@]}"; do',
                '        for f in "$d"/*.yaml "$d"/*.yml; do',
                '            [[ -f $f ]] || continue',
                '            f=${f##*/}; f=${f%.y*ml}',
                '            [[ " ${names[*]} " == *" $f "* ]] || names+=("$f")',
                "        done",
                "    done",
                '    if [[ $cur == */* || $cur == .* || $cur == "~"* ]]; then',
                "        compopt -o filenames 2>/dev/null",
                '        COMPREPLY=($(compgen -f -- "$cur"))',
                "    else",
                '        COMPREPLY=($(compgen -W "${names[*]}" -- "$cur"))',
                "    fi",
                "}", ""]
    # PATH OPTION: whether the option takes a value (the next word, or the word after '=')
    takes = [_bash_key(c.path, s) for c in cmds for o in c.options if o.takes_value for s in o.strings]
    out += [f"__{fn}_takes_value() {{  # PATH OPTION",
            '    case "$1 $2" in',
            *([f"        {'|'.join(takes)}) return 0 ;;"] if takes else []),
            "    esac",
            "    return 1",
            "}", ""]
    out += [f"__{fn}_subcommand() {{  # PATH WORD: sets sub to the canonical name if WORD is a subcommand of PATH",
            '    case "$1 $2" in']
    for c in cmds:
        for alias, canonical in c.aliases.items():
            out.append(f"        {_bash_key(c.path, alias)}) sub={shlex.quote(canonical)} ;;")
    out += ["        *) return 1 ;;", "    esac", "    return 0", "}", ""]
    out += [f"__{fn}_options() {{  # PATH",
            '    case $1 in']
    for c in cmds:
        out.append(f"        {_bash_key(c.path)}) echo {_q(s for o in c.options for s in o.strings)} ;;")
    out += ["    esac", "}", ""]
    out += [f"__{fn}_value() {{  # PATH OPTION CUR",
            '    case "$1 $2" in']
    for c in cmds:
        for o in c.options:
            code = _bash_value(fn, o)
            if o.takes_value and code:
                keys = "|".join(_bash_key(c.path, s) for s in o.strings)
                out.append(f"        {keys}) {code} ;;")
    out += ["    esac", "}", ""]
    out += [f"__{fn}_word() {{  # PATH N CUR: the N-th positional word (from 0) of PATH",
            '    case $1 in']
    for c in cmds:
        slots, rest = _slots(c)
        cases = []
        for i, a in enumerate(slots):
            code = (f"COMPREPLY=($(compgen -W {_q(c.aliases)} -- \"$3\"))" if a.kind == "command"
                    else _bash_value(fn, a))
            if code:
                cases.append(f"{i}) {code} ;;")
        if rest is not None and _bash_value(fn, rest):
            cases.append(f"*) {_bash_value(fn, rest)} ;;")
        if cases:
            out.append(f"        {_bash_key(c.path)}) case $2 in {' '.join(cases)} esac ;;")
    out += ["    esac", "}", ""]
    out += [f"_{fn}() {{",
            '    local cur=${COMP_WORDS[COMP_CWORD]} path=/ w opt= sub skip=0 npos=0 i',
            "    COMPREPLY=()",
            '    [[ $cur == "=" ]] && cur=',
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            "        w=${COMP_WORDS[i]}",
            "        if ((skip)); then skip=$((skip - 1)); continue; fi",
            "        case $w in",
            "            -*=*) ;;",
            f'            -*) if __{fn}_takes_value "$path" "$w"; then',
            '                    opt=$w; skip=1; [[ ${COMP_WORDS[i+1]-} == "=" ]] && skip=2',
            "                fi ;;",
            f'            *) if __{fn}_subcommand "$path" "$w"; then path=${{path%/}}/$sub; npos=0',
            "               else npos=$((npos + 1)); fi ;;",
            "        esac",
            "    done",
            f'    if ((skip)); then __{fn}_value "$path" "$opt" "$cur"; return 0; fi',
            "    # --option=value as one word (COMP_WORDBREAKS without '=')",
            f'    if [[ $cur == -*=* ]] && __{fn}_takes_value "$path" "${{cur%%=*}}"; then',
            f'        __{fn}_value "$path" "${{cur%%=*}}" "${{cur#*=}}"',
            '        COMPREPLY=("${COMPREPLY[@]/#/${cur%%=*}=}")',
            "        return 0",
            "    fi",
            f'    if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "$(__{fn}_options "$path")" -- "$cur")); return 0; fi',
            f'    __{fn}_word "$path" "$npos" "$cur"',
            "    return 0",
            "}",
            f"complete -F _{fn} {prog}", ""]
    return "\n".join(out)


# ---- zsh ----------------------------------------------------------------------------------------------


def _zq(text: str) -> str:
    """Single-quoted for zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _zhelp(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _zmsg(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:") or " "


def _zaction(fn: str, arg: Arg) -> str:
    if arg.kind == "choices":
        return "(" + " ".join(re.sub(r"([\s()\\])", r"\\\1", c) for c in arg.choices) + ")"
    return {"profile": f"__{fn}_profiles", "signal": "_signals", "dir": "_files -/", "file": "_files"}.get(arg.kind, " ")


def _zfunc(fn: str, path: tuple[str, ...]) -> str:
    return "_" + fn + "".join("__" + _fn(p) for p in path)


def _zsh_command(fn: str, prog: str, c: Command) -> list[str]:
    specs = []
    for o in c.options:
        exclusive = "" if len(o.strings) < 2 or o.repeatable else "(" + " ".join(o.strings) + ")"
        star = "*" if o.repeatable else ""
        explain = f"[{_zhelp(o.help)}]" if o.help else ""
        for s in o.strings:
            if o.takes_value:
                suffix = "=" if s.startswith("--") else "+"
                spec = f"{exclusive}{star}{s}{suffix}{explain}:{_zmsg(o.name)}:{_zaction(fn, o)}"
            else:
                spec = f"{exclusive}{star}{s}{explain}"
            specs.append(spec)
    for p in c.positionals:
        if p.kind == "command":
            specs += [": :->command", "*:: :->args"]
            break
        msg, act = _zmsg(p.help or p.name), _zaction(fn, p)
        if p.nargs in (argparse.ZERO_OR_MORE, argparse.REMAINDER):
            specs.append(f"*:{msg}:{act}")
        elif p.nargs == argparse.ONE_OR_MORE:
            specs += [f":{msg}:{act}", f"*:{msg}:{act}"]
        elif p.nargs == argparse.OPTIONAL:
            specs.append(f"::{msg}:{act}")
        else:
            specs += [f":{msg}:{act}"] * (p.nargs if isinstance(p.nargs, int) else 1)
    name = " ".join((prog,) + c.path)
    lines = [f"{_zfunc(fn, c.path)}() {{  # {name}",
             '    local curcontext="$curcontext" state state_descr line ret=1',
             "    typeset -A opt_args",
             "    _arguments -C -s -S \\"]
    lines += [f"        {_zq(s)} \\" for s in specs]
    lines.append("        && ret=0")
    if c.subcommands:
        described = [a.replace(":", "\\:") + (f":{c.subcommands[n].help}" if c.subcommands[n].help else "")
                     for a, n in c.aliases.items()]
        lines += ["    case $state in",
                  "        command)",
                  "            local -a commands",
                  "            commands=(",
                  *[f"                {_zq(d)}" for d in described],
                  "            )",
                  f"            _describe -t commands {_zq(name + ' command')} commands && ret=0 ;;",
                  "        args)",
                  '            curcontext="${curcontext%:*:*}:' + _fn(name.replace(" ", "-")) + '-$line[1]:"',
                  "            case $line[1] in"]
        for alias, canonical in c.aliases.items():
            lines.append(f"                {_zq(alias)}) {_zfunc(fn, c.path + (canonical,))} && ret=0 ;;")
        lines += ["            esac ;;", "    esac"]
    lines += ["    return ret", "}", ""]
    return lines


def zsh(prog: str, builder: str, root: Command, profiles: list[str]) -> str:
    fn = _fn(prog)
    out = [f"#compdef {prog}",
           f"# zsh completion for {prog}: subcommands, options and their values.",
           f"# Generated from sunsetd.cli.{builder}() by sunsetd._completion when the package was built; do not edit.",
           ""]
    if _uses_profiles(root):
        out += [f"__{fn}_profiles() {{  # profile names on the search path, or a profile file",
                f"    local -a names dirs; local d f",
                f"    names=({' '.join(_zq(p) for p in profiles)})",
                "    dirs=(${(s.:.)SUNSETD_PROFILE_PATH} ./profiles /etc/sunsetd/profiles)",
                "    for d in $dirs; do",
                "        for f in $d/*.y(a|)ml(N.); do names+=(${${f:t}%.y*ml}); done",
                "    done",
                "    _alternative \"profiles:profile:(${(u)names})\" 'files:profile file:_files -g \"*.y(a|)ml\"'",
                "}", ""]
    for c in reversed(_commands(root)):
        out += _zsh_command(fn, prog, c)
    out += ["if [[ $zsh_eval_context[-1] == loadautofunc ]]; then",
            f'    _{fn} "$@"',
            "else",
            f"    compdef _{fn} {prog}",
            "fi", ""]
    return "\n".join(out)


# ---- writing ------------------------------------------------------------------------------------------


def profile_names(directory: Path | None) -> list[str]:
    if directory is None or not directory.is_dir():
        return []
    return sorted({p.stem for p in directory.iterdir() if p.suffix in (".yaml", ".yml")})


def scripts(parsers: dict[str, tuple[str, argparse.ArgumentParser]], profiles: list[str]) -> dict[str, str]:
    """File name -> content, for each program: PROG.bash and _PROG."""
    out = {}
    for prog, (builder, parser) in parsers.items():
        root = walk(parser)
        out[f"{prog}.bash"] = bash(prog, builder, root, profiles)
        out[f"_{prog}"] = zsh(prog, builder, root, profiles)
    return out


def write(outdir: Path, profiles_dir: Path | None = None) -> list[Path]:
    from sunsetd import cli  # build time only

    parsers = {prog: (builder, getattr(cli, builder)()) for prog, builder in PROGRAMS}
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in scripts(parsers, profile_names(profiles_dir)).items():
        (outdir / name).write_text(text)
        written.append(outdir / name)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sunsetd._completion", description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--profiles", type=Path, default=None, help="directory of the profiles shipped (their names)")
    args = ap.parse_args(argv)
    for path in write(args.outdir, args.profiles):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
