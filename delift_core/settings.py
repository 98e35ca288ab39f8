"""Every engine setting, declared once: its type, default, allowed values or range, help and error.

The CLI's options (names, defaults, help), the studio's widgets and their defaults, the checks of
the API and the settings recorded in ``kernel_meta.json`` and ``manifest.json`` all derive from
:data:`SETTINGS`. A setting is checked once, in the core, by :func:`check`, and a bad value is a
:class:`~delift_core.errors.SettingError` that names the setting and its CLI option.

    from delift_core.settings import SETTINGS, check, default
    default("neighbour_random")        # 4
    check("diagonal", "max")           # 'max'
    check("neighbours", 0)             # SettingError: neighbours (--neighbours): must be at least 1

To add a setting: one :class:`Setting` in :data:`SETTINGS` and the code that uses its value. The
CLI option, the studio widget (``widget="advanced"`` puts it in the Kernel or Select page's
"Advanced settings") and the record follow (``tests/test_settings.py`` checks that every setting
has both, or says why not).

This module imports nothing heavy: the CLI builds its parser from it before any model loads.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from delift_core.errors import SettingError

__all__ = ["Setting", "SETTINGS", "GROUPS", "get", "default", "check", "check_all", "choices",
           "check_together",
           "in_group", "add_cli_options", "from_args", "record"]

GROUPS = {
    "model": "which causal LM and embedder, in which precision and where",
    "kernel": "which kernel, which pairs, where they are computed",
    "utility": "how the utility kernel asks the model (changes its values)",
    "selection": "how greedy picks the subset",
    "export": "how the subset is written",
}


@dataclass(frozen=True)
class Setting:
    """One engine setting: its type, default, allowed values or range, help, and surfaces.

    ``choices`` maps each allowed value to its help; ``low``/``high`` bound a number; ``optional``
    lets None mean "off" or "automatic". ``cli`` is the option's flag (``None``: no option, and
    ``no_cli`` says why); ``cli_off`` is the flag of a boolean that defaults to True (``--no-...``).
    ``widget`` is where the studio shows it: ``"page"`` (the page builds it), ``"advanced"`` (built
    from this spec in the page's "Advanced settings"), or ``None`` with ``no_widget`` saying why.
    ``records`` says whether it changes computed values, and so is recorded with a kernel.
    """
    # (the default diagonal, max: in the quality benchmark, docs/quality/README.md, it never did
    # worse than reference and beat it in stage-1 3-shot ICL and LoRA)

    name: str
    group: str
    type: type
    default: Any
    help: str
    label: str = ""
    choices: Mapping[str, str] | None = None
    low: float | None = None
    high: float | None = None
    optional: bool = False
    cli: str | None = ""
    cli_off: str | None = None
    no_cli: str | None = None
    widget: str | None = None
    no_widget: str | None = None
    records: bool = True
    metavar: str | None = None
    suggested: Any = None
    """The value a surface offers when the user switches an optional setting on (K = 16)."""

    @property
    def flag(self) -> str:
        """The CLI option that sets it (for messages), or the setting's name where it has none."""
        if self.cli_off:
            return self.cli_off
        if self.cli is None:
            return self.name
        return self.cli or "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value, converted to the setting's type, or a SettingError naming the setting."""
        where = f"{self.name} ({self.flag})" if self.flag != self.name else self.name
        if value is None:
            if self.optional:
                return None
            value = self.default
        if self.type is bool:
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise SettingError(f"{where}: must be true or false, got {value!r}")
            return bool(value)
        if self.type in (int, float):
            if isinstance(value, bool):
                raise SettingError(f"{where}: must be a number, got {value!r}")
            try:
                number = self.type(value)
            except (TypeError, ValueError, OverflowError):
                raise SettingError(f"{where}: must be {'a whole number' if self.type is int else 'a number'}, "
                                   f"got {value!r}") from None
            if not math.isfinite(number):  # NaN passes every bound check below
                raise SettingError(f"{where}: must be a finite number, got {value!r}")
            if self.type is int and isinstance(value, float) and value != number:
                raise SettingError(f"{where}: must be a whole number, got {value!r}")
            if self.low is not None and number < self.low:
                raise SettingError(f"{where}: must be at least {self.low:g}, got {number!r}")
            if self.high is not None and number > self.high:
                raise SettingError(f"{where}: must be at most {self.high:g}, got {number!r}")
            return number
        if not isinstance(value, str):
            raise SettingError(f"{where}: must be text, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise SettingError(f"{where}: unknown value '{value}'; use one of "
                               f"{', '.join(self.choices)}")
        return value

    def cli_help(self) -> str:
        """The option's help: the setting's help, its choices and its default."""
        parts = [self.help]
        if self.choices and any(self.choices.values()):
            parts.append("; ".join(f"{k}: {v}" if v else k for k, v in self.choices.items()))
        if self.type is not bool and self.default is not None and "\n" not in str(self.default):
            parts.append(f"default {self.default}")
        return " ".join(p.rstrip(".") + "." for p in parts if p).replace("%", "%%")


def _s(*args: Any, **kw: Any) -> Setting:
    return Setting(*args, **kw)


_SETTINGS: list[Setting] = [
    # model
    _s("model", "model", str, "gemma-3-270m", "causal LM of the utility kernel: a packaged alias "
       "(gemma-3-270m, the default; smollm2-135m-instruct), a Hugging Face hub id (online) or a local folder",
       label="Causal LM", widget="page"),
    _s("embedder", "model", str, "all-MiniLM-L6-v2", "sentence embedder of the embedding kernel "
       "and of a sparse kernel's neighbour search: the packaged all-MiniLM-L6-v2, a hub id or a "
       "local folder", label="Sentence embedder", widget="page"),
    _s("dtype", "model", str, "float32", "the causal LM's precision; bfloat16 is faster only on a "
       "CPU with AVX512-BF16 (benchmarks/README.md)", label="Model precision",
       choices={"float32": "", "bfloat16": "", "float16": ""}, widget="page"),
    _s("device", "model", str, None, "cpu, cuda, cuda:N or mps (default: the best available)",
       label="Device", optional=True, records=False,
       no_widget="the studio runs on the server's best device (state.resolve_device)"),
    # kernel
    _s("kernel", "kernel", str, "utility", "the kernel: the model's utility (DELIFT) or sentence "
       "embedding similarity (DELIFT-SE)", label="Kernel",
       choices={"utility": "UF(i, j), one model pass per pair",
                "embedding": "(cosine + 1) / 2 of sentence embeddings"}, widget="page"),
    _s("neighbours", "kernel", int, None, "sparse kernel: compute each row only for its K nearest "
       "columns by sentence embedding (plus --neighbour-random random ones)", label="Neighbours "
       "per sample (K)", low=1, optional=True, metavar="K", widget="page", suggested=16),
    _s("neighbour_random", "kernel", int, 4, "sparse kernel: seeded random columns added to each "
       "row's neighbours", label="Random columns per sample", low=0, high=256,
       widget="advanced"),
    _s("neighbour_seed", "kernel", int, 0, "sparse kernel: the seed of the random columns (its "
       "own: --seed never changes a kernel)", label="Seed of the random columns", low=0,
       widget="advanced"),
    _s("learned", "kernel", bool, False, "learned utility kernel: score only --exact-passes (or "
       "--exact-minutes) of model passes exactly, train a predictor on them, predict every other "
       "pair (each row's --neighbours nearest plus random columns); its held-out fidelity is "
       "measured and recorded every time", label="Learned kernel (the whole pool from a "
       "sample of exact pairs)", widget="page"),
    _s("exact_passes", "kernel", int, None, "learned kernel: exact model passes in all "
       "(those the pair store already holds cost no time)", label="Exact passes", low=1,
       optional=True, metavar="N", widget="page", suggested=3000),
    _s("exact_minutes", "kernel", float, None, "learned kernel: minutes of exact passes instead "
       "of a count (score what fits, then fit and predict)", label="Exact minutes", low=0.01,
       optional=True, metavar="M", widget="advanced"),
    _s("exact_per_row", "kernel", int, 12, "learned kernel: exact examples per anchor row (half "
       "among the columns predicted for it, the rest random columns shared by its chunk of anchors)", label="Exact examples per anchor row",
       low=3, high=256, widget="advanced"),
    _s("target_direction", "kernel", str, "helps-target", "how a utility target kernel is valued "
       "(embedding kernels are symmetric)", label="Target kernel direction",
       choices={"helps-target": "UF(query q | pool item i): how much pool item i helps target q "
                                "(ours: rows that help the target task)",
                "reference": "UF(pool item i | query q): how much query q helps pool item i "
                             "(official DELIFT code), computed as pool rows x target columns and "
                             "transposed"}, widget="page"),
    _s("backend", "kernel", str, "local", "where the utility pairs the pair store lacks are "
       "computed", label="Compute on",
       choices={"local": "this process", "ray": "Ray workers (pip install \"delift-studio[ray]\")"},
       records=False, widget="page"),
    _s("ray_address", "kernel", str, None, "with --backend ray: join a running cluster (`ray start "
       "--head`); without it a local cluster is started", optional=True, records=False,
       metavar="auto|HOST:PORT",
       no_widget="the studio joins RAY_ADDRESS's cluster or starts a local one"),
    _s("workers", "kernel", int, None, "with --backend ray: worker actors of one thread each "
       "(default: one per CPU of the cluster)", label="Ray workers", low=1, optional=True,
       records=False, metavar="N", widget="advanced"),
    _s("embed_batch_size", "kernel", int, 64, "texts per batch of the sentence embedder (speed "
       "and memory only, never values)", label="Embedding batch size", low=1, high=4096,
       records=False, widget="advanced"),
    _s("use_cache", "kernel", bool, True, "read and write the pair store and the embedding cache",
       label="Use the cache", cli=None, cli_off="--no-cache", records=False,
       no_widget="the studio always reuses the content-keyed caches"),
    # utility
    _s("batch_size", "utility", int, 16, "sequences per model batch (speed only, never values)",
       label="Batch size", low=1, high=4096, records=False, widget="advanced"),
    _s("block_size", "utility", int, 8, "rows per work unit of the pair store and the Ray backend "
       "(speed and resume granularity only, never values)", label="Work-unit rows", low=1,
       high=4096, records=False, widget="advanced"),
    _s("max_field_tokens", "utility", int, 256, "tokens kept of each prompt (and each example's "
       "prompt and response)", label="Max tokens per field", low=1, high=8192,
       widget="advanced"),
    _s("max_response_tokens", "utility", int, 256, "tokens of the response scored",
       label="Max response tokens", low=1, high=8192, widget="advanced"),
    _s("plain_template", "utility", str, "Instruction: Please generate a response to the following "
       "query.\n\n\nQuery: {prompt}\n", "the prompt without an example ({prompt})",
       label="Plain template",
       no_widget="set in the CLI or the API: a text box can change a template's whitespace"),
    _s("example_template", "utility", str, "Instruction:\nUse the following example as a guide to "
       "answer the query in the same format and style, providing a clear and concise response."
       "\n\n\nExample:\n{example_prompt}\n{example_response}\n\n\nQuery:\n{prompt}\n",
       "the prompt with one in-context example ({example_prompt}, {example_response}, {prompt})",
       label="Example template",
       no_widget="set in the CLI or the API: a text box can change a template's whitespace"),
    _s("score_eos", "utility", bool, True, "score an end-of-sequence token after the response",
       label="Score EOS", cli=None, cli_off="--no-score-eos", widget="advanced"),
    _s("chat_template", "utility", bool, False, "wrap each prompt in the model's chat template (a "
       "user turn and the assistant prompt): for chat-tuned models such as "
       "smollm2-135m-instruct", label="Chat template", widget="advanced"),
    # selection
    _s("diagonal", "selection", str, "max", "utility kernels: the self-pair value in selection",
       label="Self-utility (diagonal)",
       choices={"reference": "keep the self-utility UF(i, i) (official DELIFT code; the earlier "
                             "default)",
                "max": "each row covers itself fully: s_ii = 1, the kernel's maximum",
                "rowmax": "s_ii = the row's best helper's value (largest off-diagonal)"},
       widget="page"),
    _s("verify_rounds", "selection", int, 0, "learned kernel: rounds of scoring the selection's "
       "predicted covers (each row's best selected helper) exactly and selecting again; 0: off",
       label="Verification rounds", low=0, high=20, records=False, widget="page", suggested=2),
    _s("verify_explore", "selection", float, 0.0, "learned kernel: each verification round also "
       "scores every pair of this share of the pool's unselected columns, those of highest "
       "predicted gain to the selection (helpers the prediction under-rates, which covers alone "
       "never score), one pass per pair; 0.1 lifted 10 % selections (docs/learned_kernel.md); 0: "
       "covers only", label="Explore (share of the pool's columns)", low=0.0, high=1.0,
       records=False, widget="page", suggested=0.1),
    _s("method", "selection", str, "lazy", "the greedy algorithm", label="Greedy",
       choices={"lazy": "lazy greedy (exact)", "stochastic": "stochastic greedy (faster, "
                "approximate)", "naive": "naive greedy (exact, slow)"}, widget="advanced"),
    _s("epsilon", "selection", float, 0.01, "stochastic greedy's epsilon", label="Epsilon "
       "(stochastic greedy)", low=1e-6, high=1.0, widget="advanced"),
    _s("seed", "selection", int, 0, "the random baseline's and stochastic greedy's seed (never a "
       "kernel's)", label="Seed", low=0, widget="page"),
    # export
    _s("format", "export", str, None, "row files' format (default: the pool's own, else jsonl); "
       "hf writes selected.hf/ and rejected.hf/ as datasets.save_to_disk folders",
       label="Format of the row files", optional=True,
       choices={"jsonl": "", "json": "", "csv": "", "parquet": "", "hf": ""}, records=False,
       widget="page"),
    _s("csv_escape", "export", bool, False, "with --format csv: quote cells that start with = + - "
       "@ in the selected/rejected files too (annotated.csv always is), against spreadsheet "
       "formula injection; off by default because it changes the data", label="Escape formulas",
       records=False, widget="page"),
]

SETTINGS: dict[str, Setting] = {s.name: s for s in _SETTINGS}
"""Every engine setting by name, in the order the CLI's help lists them."""


def get(name: str) -> Setting:
    """The setting called ``name`` (a KeyError naming the known ones otherwise)."""
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"no setting '{name}'; known: {', '.join(SETTINGS)}") from None


def default(name: str) -> Any:
    """A setting's default value."""
    return get(name).default


def choices(name: str) -> tuple[str, ...]:
    """A setting's allowed values, in order."""
    return tuple(get(name).choices or ())


def check(name: str, value: Any) -> Any:
    """``value`` checked against setting ``name`` (None takes the default unless optional)."""
    return get(name).check(value)


def in_group(*groups: str) -> list[Setting]:
    """The settings of these groups, in declaration order."""
    return [s for s in _SETTINGS if s.group in groups]


def check_all(values: Mapping[str, Any], groups: Iterable[str] | None = None) -> dict[str, Any]:
    """Every setting of ``groups`` (all by default): the given value checked, or the default."""
    names = [s.name for s in (in_group(*groups) if groups is not None else _SETTINGS)]
    unknown = set(values) - set(SETTINGS)
    if unknown:
        raise SettingError(f"unknown setting(s) {', '.join(sorted(unknown))}; known: "
                           f"{', '.join(SETTINGS)}")
    return {n: check(n, values.get(n)) for n in names}


def check_together(values: Mapping[str, Any]) -> None:
    """The rules between settings (each setting's own range is :func:`check`'s): a SettingError
    for a combination that cannot run, before any model loads."""
    if values.get("backend", default("backend")) != "ray" and (values.get("ray_address")
                                                               or values.get("workers")):
        raise SettingError("--ray-address and --workers need --backend ray (ray_address and "
                           "workers are settings of the Ray backend)")
    if values.get("learned") and values.get("kernel", default("kernel")) != "utility":
        raise SettingError("--learned needs the utility kernel (--kernel utility): the "
                           "embedding kernel is cheap already")
    if not values.get("learned") and (values.get("exact_passes") is not None
                                      or values.get("exact_minutes") is not None):
        raise SettingError("--exact-passes and --exact-minutes need --learned")
    if values.get("exact_passes") is not None and values.get("exact_minutes") is not None:
        raise SettingError("give --exact-passes or --exact-minutes, not both")


def add_cli_options(parser: argparse.ArgumentParser, *groups: str,
                    skip: Iterable[str] = ()) -> None:
    """One option per setting of ``groups`` (its flag, type and help from the spec). Values are
    not checked here but by :func:`check` in the core, so every surface gives the same error."""
    skip = set(skip)
    for s in in_group(*groups):
        if s.name in skip or (s.cli is None and not s.cli_off):
            continue
        if s.type is bool:
            if s.cli_off:
                parser.add_argument(s.cli_off, dest=s.name, action="store_false",
                                    help=f"do not {s.help[0].lower()}{s.help[1:]}"
                                    .replace("%", "%%"))
            else:
                parser.add_argument(s.flag, dest=s.name, action="store_true", help=s.cli_help())
            continue
        parser.add_argument(s.flag, dest=s.name, type=s.type if s.type is not str else str,
                            default=None, metavar=s.metavar or (s.name.upper() if not s.choices
                                                                else "{" + ",".join(s.choices) + "}"),
                            help=s.cli_help())


def from_args(args: argparse.Namespace, *groups: str, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The values of ``groups``' settings that a parsed command line holds, checked (unset ones
    take their defaults); ``skip``: settings whose option the command defines its own way."""
    skip = set(skip)
    values = {s.name: getattr(args, s.name) for s in in_group(*groups)
              if hasattr(args, s.name) and s.name not in skip}
    return {k: check(k, v) for k, v in values.items()}


def record(values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings among ``values`` that change computed values: what a kernel records."""
    return {k: v for k, v in values.items() if k in SETTINGS and SETTINGS[k].records}
