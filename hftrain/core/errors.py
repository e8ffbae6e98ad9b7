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
            return not_an_option(names, options.all_names(chosen["model"], chosen["data"]), command)
    section = re.match(r'Parser key "([\w.]+)":', message)
    option = re.search(r"Option '(\w+)' is not accepted", message)
    class_path = re.search(r"class_path '([\w.]+)'", message)
    if section and option:
        name = options.short_name(class_path.group(1)) if class_path else None
        return no_such_class_option(section.group(1), name, option.group(1), command)
    bad_value = re.search(r'Parser key "([\w.]+)":\s+Expected a <class \'(\w+)\'>\. Got value: (.*)', message)
    if section and bad_value:
        key = bad_value.group(1) if "." in bad_value.group(1) else f"{section.group(1)}.{bad_value.group(1)}"
        return HFTrainError(f"{key} must be of type {bad_value.group(2)}, got {bad_value.group(3).strip()!r}.")
    not_a_class = re.search(r"Expected a dot import path string: (\S+)|Import path (\S+) does not", message)
    if section and not_a_class:
        return not_a_task_class(section.group(1), next(g for g in not_a_class.groups() if g))
    types = re.search(r"Subtypes: \[(.*)\]", message)
    given = re.search(r"Given value: (.*)", message)
    if section and "." in section.group(1) and types and given:
        return HFTrainError(f"{section.group(1)} must be {_accepted(types.group(1))}, got {given.group(1)!r}.")
    first, *rest = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return HFTrainError(f"{first} {' '.join(rest)}".strip() + f" (`{command} --help` lists the options.)")


def _did_you_mean(name: str, candidates: list[str]) -> str:
    from hftrain import options

    matches = options.closest(name, candidates)
    return f" Did you mean {' or '.join('--' + m for m in matches)}?" if matches else ""


def not_an_option(names: list[str], candidates: list[str], command: str) -> HFTrainError:
    """Options that no section has (`--trainer.max_epoch`), each with its closest real name."""
    return HFTrainError(
        " ".join(f"--{name} is not an option.{_did_you_mean(name, candidates)}" for name in names)
        + f" Options are never abbreviated; `{command} --help` lists them."
    )


def no_such_class_option(where: str, name: str | None, option: str, command: str) -> HFTrainError:
    """An option that the chosen model or data class (`name`, a short name; None if not hftrain's) lacks."""
    from hftrain import options

    key = f"{where}.{option}"
    candidates = [f"{where}.{o.name}" for o in options.class_options(name)] if name else []
    return HFTrainError(
        f"{name or 'The ' + where + ' class'} has no option {option} (--{key} on the command line, "
        f"{where}.init_args.{option} in a config).{_did_you_mean(key, candidates)} `{command} "
        f"--{where}.help {name or '<class>'}` lists its options."
    )


def not_a_task_class(kind: str, given: str) -> HFTrainError:
    """A `--model` / `--data` class that is not one of hftrain's, with the closest one."""
    from hftrain import options

    known = options.task_classes().get(kind, [])
    matches = options.closest(given.rsplit(".", 1)[-1], known)
    return HFTrainError(
        f"--{kind} {given} is not one of hftrain's {kind} classes."
        + (f" Did you mean {' or '.join(matches)}?" if matches else "")
        + f" They are: {', '.join(known)}."
    )


def _top_level_items(text: str) -> list[str]:
    """`a, Literal[1, 2], b` -> ["a", "Literal[1, 2]", "b"]: split at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [item.strip() for item in [*items, text[start:]] if item.strip()]


def _accepted(subtypes: str) -> str:
    """jsonargparse's list of a union's types as a user reads it: `<class 'int'>, typing.Literal['16-mixed', 32],
    NoneType` -> `int, one of '16-mixed', 32, or null`."""
    literals, types = [], []
    for item in _top_level_items(subtypes):
        literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", item)
        if literal:
            literals += _top_level_items(literal.group(1))
        else:
            name = item.removeprefix("<class '").removesuffix("'>")
            types.append("null" if name == "NoneType" else name)
    if literals:
        types.insert(0, f"one of {', '.join(literals)}")
    return " or ".join(types)
