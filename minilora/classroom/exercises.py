"""The course's graded steps: the step table and what is derived from it.

The functions students write carry ``### BEGIN SOLUTION`` / ``### END SOLUTION`` comment lines
around their bodies (the nbgrader convention, ``minilora.classroom.regions``). ``STEPS`` lists
them in teaching order, each with the spec tests that grade it and the tutorial functions that
are its notebook exercise. Everything else is derived from that one table:

    tests/conftest.py            marks each spec test with its step: ``pytest -m step01``
    workspace.py                 the student workspace, the teacher's hint files
    grading.py                   grades a workspace, one pytest run per step
    leaks.py                     proves that no solution line reaches a workspace

Command line: ``minilora exercises {list,make,hints,grade,grade-all} ...`` or ``python -m
minilora.classroom ...`` (docs/teachers.md); its parser lives in grading.py.

Adding a step: mark the function's body in the library, add a row to ``STEPS``, register its
``stepNN`` marker in pyproject.toml. A row whose module or function does not exist yet is shown
as "not available" and skipped everywhere, so a row can come before its code.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from minilora.classroom.regions import SolutionMarkerError, find_regions

SOURCE_DIR = Path(__file__).resolve().parents[2]         # the checkout this package lives in


# --------------------------------------------------------------------------- the step table
@dataclass(frozen=True)
class Step:
    """One exercise: the function(s) a student writes and the spec tests that grade them.

    number:   1, 2, ...: the pytest marker is ``step01``, the stub says "Step 1: <name>".
    module:   the file, relative to the project root ("minilora/nn/layers.py").
    function: the function to write, or a tuple of functions written in the same step.
    tests:    {test file: test-name substrings}. A test grades the step when its function name
              contains one of them. Choose tests that call this step's function and no later
              step's, so that a student can pass the steps in order.
    concept:  one line for the tables.
    notebook: the tutorial functions (``my_...``) whose marked bodies are this step's notebook
              exercise; the student's copy of the notebook has this step's stub there.
    minutes:  the time a student is expected to need, for the tables ("20-30").
    """
    number: int
    name: str
    module: str
    function: str | tuple[str, ...]
    tests: dict = field(hash=False)
    concept: str = ""
    notebook: tuple[str, ...] = ()
    minutes: str = ""

    @property
    def marker(self) -> str:
        return f"step{self.number:02d}"

    @property
    def functions(self) -> tuple[str, ...]:
        return (self.function,) if isinstance(self.function, str) else tuple(self.function)

    @property
    def stub(self) -> str:
        """The statement that replaces this step's solution regions (before indentation)."""
        return f"raise NotImplementedError({json.dumps(f'Step {self.number}: {self.name}')})"

    def missing(self, root=SOURCE_DIR) -> str | None:
        """Why the step is not available in the project at ``root`` yet; None when it is."""
        path = Path(root) / self.module
        if not path.is_file():
            return f"{self.module} does not exist yet"
        text = path.read_text(encoding="utf-8")
        absent = [f for f in self.functions
                  if not re.search(rf"^\s*def {re.escape(f)}\s*\(", text, re.M)]
        return f"{self.module} has no {', '.join(absent)} yet" if absent else None


_ADAMW_TESTS = ("test_first_adamw_step", "test_adamw_matches_torch_adamw", "test_adamw_on_cupy",
                "test_adamw_update_leaves_the_gradient_unchanged",
                "test_weight_decay_is_decoupled", "test_no_decay_parameters_do_not_shrink",
                "test_optimizer_state_exists_only_for_trainable_parameters",
                "test_params_are_updated_in_place", "test_parameter_added_later",
                "test_learning_rate_set_between_steps_is_used")
_LORA, _BOOK = "minilora/adapters/lora.py", "minilora/adapters/bookkeeping.py"

STEPS: list[Step] = [
    Step(1, "linear_backward", "minilora/nn/layers.py", "linear_backward",
         {"tests/test_layers.py": ("test_linear_backward_matches_numerical_gradient",
                                   "test_frozen_linear_computes_no_weight_gradient")},
         "chain rule through y = x W^T + b; a frozen W needs no dW", ("my_linear_backward",), "20-30"),
    Step(2, "layernorm_backward", "minilora/nn/layers.py", "layernorm_backward",
         {"tests/test_layers.py": ("test_layernorm_backward_matches_numerical_gradient",)},
         "three paths through mean and variance collapse to one formula", ("my_layernorm_backward",), "40-60"),
    Step(3, "cross_entropy_backward", "minilora/nn/layers.py", "cross_entropy_backward",
         {"tests/test_layers.py": ("test_cross_entropy_backward_matches_numerical_gradient",
                                   "test_cross_entropy_ignores_masked_positions")},
         "the gradient of the masked mean loss with respect to the logits", ("my_cross_entropy_grad",), "20-30"),
    Step(4, "attention_backward", "minilora/nn/attention.py", "attention_backward",
         {"tests/test_attention.py": ("test_attention_backward_matches_numerical_gradient",)},
         "softmax Jacobian, causal mask, scaled dot products", ("my_softmax_row_sums",), "45-75"),
    Step(5, "adamw_update", "minilora/nn/optim.py", "adamw_update",
         {"tests/test_optim.py": _ADAMW_TESTS,
          "tests/test_optim_hidden.py": ("test_adamw_matches_direct_reimplementation",)},
         "bias-corrected moments and decoupled weight decay", (), "20-30"),
    Step(6, "lora_init", _LORA, "init_lora_pair",
         {"tests/test_lora.py": ("_init_has_std_", "test_every_init_starts_with_delta_W_zero",
                                 "test_only_one_factor_is_random", "test_init_std_argument_is_used",
                                 "test_kaiming_init_is_uniform", "test_init_returns_the_requested_dtype")},
         "A random, B = 0: the adapted model starts as the base model", ("my_init",), "15-25"),
    Step(7, "lora_scale", _LORA, "lora_scale",
         {"tests/test_lora.py": ("test_scale_has_the_papers_values", "test_rslora_keeps_the_update_size",
                                 "test_use_rslora_sets_every_adapted_modules_scale",
                                 "test_rank_and_alpha_patterns_set_per_module_rank_and_scale")},
         "the scale alpha / r (§4.1), and rsLoRA's rank-stabilised scale", (), "10-20"),
    Step(8, "lora_forward", _LORA, "lora_forward",
         {"tests/test_lora.py": ("test_lora_forward_with_B_zero", "test_lora_forward_adds_s_times_input",
                                 "test_lora_update_is_linear_in_s", "test_lora_dropout_applies_to_the_A_path"),
          "tests/test_lora_hidden.py": ("test_lora_forward_matches_its_closed_form",),
          "tests/test_lora_model.py": ("test_lora_model_equals_base_model_at_init",
                                       "test_disable_adapter_gives_the_base_logits_exactly",
                                       "test_switching_adapters_gives_each_adapters_own_outputs")},
         "h = W0 x + s B A x without forming B A", ("my_lora_forward",), "20-30"),
    Step(9, "lora_backward", _LORA, "lora_backward",
         {"tests/test_lora.py": ("test_lora_backward_matches_numerical_gradient",
                                 "test_lora_backward_with_dropout_matches_numerical_gradient",
                                 "test_only_B_gets_a_gradient_at_init")},
         "gradients for A and B only; none for the frozen W0", ("my_lora_backward",), "30-45"),
    Step(10, "trainable_set", _BOOK, "trainable_names",
         {"tests/test_bookkeeping.py": ("test_trainable_set", "test_bias_modes_train",
                                        "test_saved_modules_train",
                                        "test_optimizer_state_exists_only_for_the_trainable_set")},
         "what trains (and keeps optimizer state) while an adapter is active", (), "20-30"),
    Step(11, "merge", _LORA, ("merge_weights", "unmerge_weights"),
         {"tests/test_lora.py": ("test_merge_then_unmerge_restores_w0_up_to_float32_rounding",
                                 "test_lora_forward_equals_linear_with_merged_weight"),
          "tests/test_lora_model.py": ("test_merged_forward_matches_unmerged_forward",
                                       "test_merge_then_unmerge_restores_the_base_logits",
                                       "test_merge_and_unload_gives_a_plain_model_with_the_same_outputs")},
         "W = W0 + s B A: no extra latency, and back", ("my_merge",), "10-20"),
    Step(12, "merge_bookkeeping", _BOOK, ("merge_adapters", "unmerge_adapters"),
         {"tests/test_bookkeeping.py": ("test_merge_adds_each_scaled_update_in_place",
                                        "test_merging_an_adapter_twice", "test_safe_merge",
                                        "test_unmerge", "test_merge_adapters_agrees_with_lora_model")},
         "merging in place, never twice, all or nothing; unmerging last-merged-first", (), "30-45"),
    Step(13, "subspace_similarity", "minilora/experiments/analysis.py",
         ("subspace_similarity", "subspace_similarity_grid"),
         {"tests/test_analysis.py": ("subspace_similarity",)},
         "overlap of the right singular subspaces of two adapters", ("my_phi",), "30-45"),
    Step(14, "dora_forward", "minilora/adapters/dora.py", "dora_forward",
         {"tests/test_dora.py": ("test_dora_equals_base_layer_at_init", "test_magnitude_init_includes_a_nonzero_BA",
                                 "test_dora_forward_matches_eq5", "test_dora_dropout_matches_peft_training_formula",
                                 "test_rslora_scale_composes_with_dora"),
          "tests/test_dora_model.py": ("test_dora_model_equals_base_model_at_init",)},
         "W' = m (W0 + s B A) / ||W0 + s B A|| per output row, without forming W' for the output",
         ("my_dora_forward",), "20-30"),
    Step(15, "dora_backward", "minilora/adapters/dora.py", "dora_backward",
         {"tests/test_dora.py": ("test_exact_backward_matches_numerical_gradient_of_the_true_loss",
                                 "test_detached_backward_gives_exact_dx_and_dm",
                                 "test_detached_backward_gives_dA_dB_of_the_loss_with_the_norm_held_fixed",
                                 "test_detach_changes_only_the_gradients_of_A_and_B",
                                 "test_only_B_and_m_get_a_gradient_at_init")},
         "eq. 6-7 by hand, and what treating ||V|| as a constant (§4.3) changes: dA and dB only",
         ("my_dora_backward",), "45-60"),
    Step(16, "nf4_quantize", "minilora/adapters/quant.py", "quantize_blockwise",
         {"tests/test_quant.py": ("test_quantize_blockwise_", "test_each_block_is_scaled_by_its_own_largest_magnitude",
                                  "test_an_odd_count_pads_with_the_code_of_zero")},
         "QLoRA's blockwise absmax: scale each block into [-1, 1], take the nearest NF4 code", ("my_quantize_blockwise",),
         "20-30"),
    Step(17, "nf4_dequantize", "minilora/adapters/quant.py", "dequantize_blockwise",
         {"tests/test_quant.py": ("test_dequantize_blockwise_", "test_the_largest_magnitude_of_each_block_is_stored",
                                  "test_an_all_zero_block_dequantizes_to_zero",
                                  "test_dequantize_returns_float32_products_in_the_asked_dtype")},
         "code[i] times its block's scale: the weight every QLoRA product uses",
         ("my_dequantize_blockwise",), "10-20"),
    Step(18, "prefix_layer_backward", "minilora/nn/specials.py", "replace_backward",
         {"tests/test_specials.py": ("test_replace_backward_matches_numerical_gradient",
                                     "test_replace_backward_sums_the_rows_into_dS")},
         "prefix-layer tuning: activations replaced by trainable ones; dS sums over the batch, dx is 0 there",
         ("my_replace_backward",), "15-25"),
]

# Optimised copies of graded functions (minilora.fast, the forms the training loop uses) are answers
# too. In a workspace each of these becomes a call of its textbook form, forwards with their
# backwards (a pair's caches must match), so a student's own code runs everywhere, the fast
# training path included, and no optimised answer is handed out: {file: {function: textbook module}}.
TEXTBOOK_IN_WORKSPACE = {
    "minilora/fast/kernels.py": {"layernorm_forward": "minilora.nn.layers", "layernorm_backward": "minilora.nn.layers"},
    "minilora/fast/attention.py": {"attention_forward": "minilora.nn.attention",
                                   "attention_backward": "minilora.nn.attention"},
}


def get_step(number: int) -> Step:
    for step in STEPS:
        if step.number == number:
            return step
    raise ValueError(f"no step {number}; steps are {[s.number for s in STEPS]}")


def steps_for_test(path: str, test_name: str) -> list[Step]:
    """The steps graded by the test ``test_name`` (parameters allowed) of ``path`` (from the root)."""
    name = test_name.split("[")[0]
    return [s for s in STEPS if any(p in name for p in s.tests.get(path, ()))]


def step_tests(step: Step, root=SOURCE_DIR) -> list[str]:
    """Node ids "tests/test_x.py::test_y" of the test functions in ``root`` that grade ``step``."""
    found = []
    for rel, patterns in step.tests.items():
        path = Path(root) / rel
        if not path.is_file():
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            defs = [(node.name, node)] if isinstance(node, ast.FunctionDef) else []
            if isinstance(node, ast.ClassDef):
                defs = [(f"{node.name}::{m.name}", m) for m in node.body if isinstance(m, ast.FunctionDef)]
            found += [f"{rel}::{nid}" for nid, d in defs
                      if d.name.startswith("test") and any(p in d.name for p in patterns)]
    return found


def step_of(function: str | None, module: str | None, where: str, line: int) -> Step:
    """The row of a solution region: by module and function, or by notebook function (module None)."""
    for step in STEPS:
        names = step.functions if module is not None else step.notebook
        if function in names and module in (None, step.module):
            return step
    what = f"{function}()" if function else "module-level code"
    raise SolutionMarkerError(f"{where}:{line}: the solution region in {what} has no row in "
                              f"minilora.classroom.exercises.STEPS")


# --------------------------------------------------------------------------- the guide for a stub
def _function_and_regions(text: str, function: str):
    fn = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef) and n.name == function)
    return fn, [r for r in find_regions(text) if fn.lineno <= r.begin <= fn.end_lineno]


def names_left_for_later(text: str, function: str) -> tuple[str, ...]:
    """The names a function's solution regions must define for the lines after them.

    A name counts when a region assigns it and a line after that region (in the same function)
    reads it: for ``return dx, dW, db`` after the region that is ("dx", "dW", "db").
    """
    fn, regions = _function_and_regions(text, function)
    names = []
    for r in regions:
        stored = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                  and r.begin < n.lineno < r.end}
        read = sorted((n.lineno, n.col_offset, n.id) for n in ast.walk(fn)
                      if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.lineno > r.end)
        for *_, name in read:                      # in the order the later lines read them
            if name in stored and name not in names:
                names.append(name)
    return tuple(names)


def stub_guide(text: str, function: str) -> str:
    """A few words for the student beside the stub: what the code must leave for the lines after it."""
    try:
        fn, regions = _function_and_regions(text, function)
    except (SyntaxError, StopIteration):         # a notebook cell with IPython syntax: no guide
        return ""
    names = names_left_for_later(text, function)
    if names:
        return f"define {', '.join(names)}: the lines below use them"
    returns = any(isinstance(n, ast.Return) and n.value is not None and r.begin < n.lineno < r.end
                  for n in ast.walk(fn) for r in regions)
    return "return the result, as the docstring says" if returns else "update the arguments in place"


# --------------------------------------------------------------------------- the table's checks
def check_table(root=SOURCE_DIR) -> list[str]:
    """Problems between STEPS and the project at ``root``; empty when table and code agree."""
    problems = []
    numbers = [s.number for s in STEPS]
    if numbers != sorted(set(numbers)):
        problems.append(f"step numbers must be increasing and unique: {numbers}")
    marked = set()
    root = Path(root)
    for path in sorted((root / "minilora").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for r in find_regions(path.read_text(encoding="utf-8"), rel):
            try:
                marked.add((step_of(r.function, rel, rel, r.begin).number, r.function))
            except SolutionMarkerError as e:
                problems.append(str(e))
    for s in STEPS:
        if s.missing(root) is not None:
            continue
        problems += [f"step {s.number}: {f}() in {s.module} has no solution region"
                     for f in s.functions if (s.number, f) not in marked]
        names = [t.split("::")[-1] for t in step_tests(s, root)]
        problems += [f"step {s.number}: no test in {rel} matches {p!r}"
                     for rel, ps in s.tests.items() for p in ps if not any(p in n for n in names)]
    return problems


def steps_table(root=SOURCE_DIR) -> str:
    lines = [f"{'step':>4}  {'name':<24} {'tests':>5}  {'minutes':>7}  module / note"]
    for s in STEPS:
        why = s.missing(root)
        note = f"not available: {why}" if why else s.module
        count = "-" if why else len(step_tests(s, root))
        lines.append(f"{s.number:>4}  {s.name:<24} {count:>5}  {s.minutes:>7}  {note}")
    return "\n".join(lines)
