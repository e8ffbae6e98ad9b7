"""The one error type users see.

Anything the user can fix (a path, a column, a label, a config value) is raised as `HFTrainError` with a
message that names the problem, where it is, and what to do. The CLI prints the message without a
traceback (set ``HFTRAIN_DEBUG=1`` to get one) and exits with status 2.
"""

import re


class HFTrainError(Exception):
    """A problem in the user's config, data, model or checkpoint, with a message saying how to fix it."""


def parser_error(message: str, argv: list[str], subcommand: str | None) -> HFTrainError:
    """jsonargparse's error (a nested report that ends in the point) as one paragraph with a did-you-mean."""
    from hftrain import options

    chosen, _, _ = options.chosen_classes(argv)
    command = f"hftrain {subcommand}" if subcommand else "hftrain"
    unknown = re.search(r"unrecognized arguments: (.*)", message)
    if unknown:
        names = [a.lstrip("-").split("=")[0] for a in unknown.group(1).split() if a.startswith("--")]
        if names:
            candidates = options.all_names(chosen["model"], chosen["data"])
            return HFTrainError(
                " ".join(f"--{name} is not an option.{_did_you_mean(name, candidates)}" for name in names)
                + f" Options are never abbreviated; `{command} --help` lists them."
            )
    section = re.match(r'Parser key "([\w.]+)":', message)
    option = re.search(r"Option '(\w+)' is not accepted", message)
    class_path = re.search(r"class_path '([\w.]+)'", message)
    if section and option:
        name = options.short_name(class_path.group(1)) if class_path else None
        where, key = section.group(1), f"{section.group(1)}.{option.group(1)}"
        candidates = [f"{where}.{o.name}" for o in options.class_options(name)] if name else []
        return HFTrainError(
            f"{name or 'The ' + where + ' class'} has no option {option.group(1)} (--{key} on the command line, "
            f"{where}.init_args.{option.group(1)} in a config).{_did_you_mean(key, candidates)} `{command} "
            f"--{where}.help {name or '<class>'}` lists its options."
        )
    bad_value = re.search(r'Parser key "([\w.]+)":\s+Expected a <class \'(\w+)\'>\. Got value: (.*)', message)
    if section and bad_value:
        key = bad_value.group(1) if "." in bad_value.group(1) else f"{section.group(1)}.{bad_value.group(1)}"
        return HFTrainError(f"{key} must be of type {bad_value.group(2)}, got {bad_value.group(3).strip()!r}.")
    not_a_class = re.search(r"Expected a dot import path string: (\S+)|Import path (\S+) does not", message)
    if section and not_a_class:
        given, kind = next(g for g in not_a_class.groups() if g), section.group(1)
        known = options.task_classes().get(kind, [])
        matches = options.closest(given.rsplit(".", 1)[-1], known)
        return HFTrainError(
            f"--{kind} {given} is not one of hftrain's {kind} classes."
            + (f" Did you mean {' or '.join(matches)}?" if matches else "")
            + f" "
            f"They are: {', '.join(known)}."
        )
    types = re.search(r"Subtypes: \[(.*?)\]", message)
    given = re.search(r"Given value: (.*)", message)
    if section and "." in section.group(1) and types and given:
        accepted = " or ".join(t.strip().removeprefix("<class '").removesuffix("'>") for t in types.group(1).split(","))
        return HFTrainError(
            f"{section.group(1)} must be {accepted.replace('NoneType', 'null')}, got {given.group(1)!r}."
        )
    first, *rest = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return HFTrainError(f"{first} {' '.join(rest)}".strip() + f" (`{command} --help` lists the options.)")


def _did_you_mean(name: str, candidates: list[str]) -> str:
    from hftrain import options

    matches = options.closest(name, candidates)
    return f" Did you mean {' or '.join('--' + m for m in matches)}?" if matches else ""
