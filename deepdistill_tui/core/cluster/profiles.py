"""Profiles: what a bundle's jobs ask the scheduler for and which engine serves the teachers.

``cluster`` (the default) is the real thing: GPUs per node, vLLM or SGLang servers, DeepSpeed ZeRO-3 or
FSDP. ``cpu-test`` renders the same plan and the same scripts (shard counts, array jobs, dependency
chain, merge, selection, export, checkpoint layout) for CPUs, so that a bundle can be submitted to a
real Slurm on any machine: the teachers are served by llama.cpp's OpenAI-compatible server on a stand-in
GGUF shipped in the bundle, the student is a small stand-in of its architecture, training is DDP over
gloo with GPUS_PER_NODE processes a node, and jobs ask for CPUs. Only models and resources change;
the recipe's teachers still speak the OpenAI API to their servers, as on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import Recipe

PROFILES = ("cluster", "cpu-test")
MODELS = "models"
"""The bundle folder holding a CPU test's stand-in models (paths are relative: jobs run from the
bundle folder)."""
TEACHER_GGUF = f"{MODELS}/teacher-smollm2-r1-style.gguf"
CPU_TEST_CONTEXT = 8192
"""A stand-in server's context: SmolLM2's own length, not the recipe's 32k for long traces."""


@dataclass(frozen=True)
class Profile:
    name: str
    engines: tuple[str, ...]
    """Serve scripts written per teacher; the first is env.sh's INFERENCE_ENGINE unless the recipe
    names another."""
    gpus: bool
    cpus: dict[str, int]
    """CPUs per task for the jobs without GPUs (and for all jobs of a CPU test)."""
    endpoint_wait_s: int
    threads: int

    def resources(self, job: str, nodes: int = 1, per_node: int = 1) -> str:
        """The #SBATCH lines for a job's resources: ``per_node`` is GPUs a node (processes a node
        when there are no GPUs) for the serve and train jobs."""
        if job in ("serve", "train"):
            lines = [f"--nodes={nodes if self.gpus or job == 'train' else 1}", "--ntasks-per-node=1"]
            lines += ([f"--gpus-per-node={per_node}"] if self.gpus else
                      [f"--cpus-per-task={per_node if job == 'train' else self.cpus['serve']}"])
            if job == "train" and self.gpus:
                lines.append("--exclusive")
        else:
            lines = [f"--cpus-per-task={self.cpus[job]}"]
        return "\n".join(f"#SBATCH {line}" for line in lines)


CLUSTER = Profile("cluster", ("vllm", "sglang"), True,
                  {"prepare": 16, "sample": 8, "grade": 16, "select": 16, "serve": 0}, 1800, 8)
CPU_TEST = Profile("cpu-test", ("llamacpp",), False,
                   {"prepare": 1, "sample": 1, "grade": 1, "select": 1, "serve": 1}, 300, 1)


def profile(name: str) -> Profile:
    if name not in PROFILES:
        raise DeepDistillError(f"--profile {name}: choose one of {', '.join(PROFILES)}")
    return CPU_TEST if name == "cpu-test" else CLUSTER


def cpu_test_recipe(recipe: Recipe) -> Recipe:
    """The recipe a CPU test runs: the student replaced by a stand-in of its architecture, kept in the
    bundle, and no embedding model for decontamination (the n-gram check stays). Teachers, data rules,
    selection and training settings are the recipe's own."""
    from deepdistill_tui.core.student.standin import student_family

    hub = [s.path for s in recipe.data.sources if s.format == "hf_hub"]
    if hub:
        raise DeepDistillError(f"--profile cpu-test: source {hub[0]} is a Hub dataset, which a test "
                               "machine cannot download; point data.sources at a local file")
    data = recipe.model_dump(mode="json")
    student = recipe.training.student
    data["training"]["student"] = {"name": student.name,
                                   "hf_model": f"{MODELS}/student-{student_family(student)}"}
    data["data"]["decontamination"]["embedding_model"] = None
    return Recipe.model_validate(data)


def write_stand_ins(recipe: Recipe, bundle: Path) -> None:
    """The CPU test's models, into the bundle: the teachers' GGUF and the student's folder."""
    from deepdistill_tui.core.student.standin import build_student, r1_style_teacher, student_family

    (bundle / MODELS).mkdir(parents=True, exist_ok=True)
    made = r1_style_teacher(bundle / MODELS)
    assert made == bundle / TEACHER_GGUF
    student = recipe.training.student
    build_student(student_family(student), bundle / str(student.hf_model))
