import sys, time, torch
sys.path.insert(0, ".")
from tests.helpers import runnable_plan_of
from fxfusion.graph.loader import load_model
from fxfusion.graph.capture import capture
from fxfusion.planning.dynamic import plan_over_range, resolve, capture_inputs
import fxfusion
torch.set_num_threads(1)
name, spec = sys.argv[2], sys.argv[3]
lm = load_model(f"models/zoo/{name}.py"); m, x = lm.model, lm.example_inputs
path = f"/tmp/dyn/{name}_dyn.json"
if sys.argv[1] == "save":
    plan = plan_over_range(m, x, spec, lambda i, s: runnable_plan_of(m, i), torch.device("cpu"))
    fxfusion.save_plan(plan, path, m, x); print("saved", len(plan.groups))
else:
    t = time.perf_counter(); capture(m, x); c0 = time.perf_counter() - t
    dims = resolve(spec, m, x)
    t = time.perf_counter(); capture(m, capture_inputs(dims, x), dynamic=dims); c1 = time.perf_counter() - t
    t = time.perf_counter(); fast = fxfusion.apply(m, fxfusion.load_plan(path), example_inputs=x); a = time.perf_counter() - t
    print(f"{name} {spec}: {sum(r.applied for r in fast.fxfusion_rewrites)} rewrites; static capture {c0:.2f} s, symbolic capture {c1:.2f} s, load+apply {a:.2f} s ({a - c0:+.2f} s over the static capture)")
