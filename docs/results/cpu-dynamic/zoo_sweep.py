"""Every zoo tiny preset: one plan over a range (every legal site, first CPU variant; no timing), verified against
float64 at the buckets and a shape never measured."""
import sys, time, torch, traceback
sys.path.insert(0, ".")
from tests.helpers import runnable_plan_of
from fxfusion.graph.loader import load_model
from fxfusion.planning.apply import apply
from fxfusion.planning.dynamic import plan_over_range
from fxfusion.planning.dynamic_verify import check_shapes, shapes_line
torch.set_num_threads(1)
for name in sys.argv[1:]:
    t = time.time()
    try:
        lm = load_model(f"models/zoo/{name}.py")
        m, x = lm.model, lm.example_inputs
        tokens = any(isinstance(i, torch.Tensor) and not i.is_floating_point() and i.dim() >= 2 for i in x)
        spec = "batch=1:4,seq=8:32" if tokens else "batch=1:4"
        plan = plan_over_range(m, x, spec, lambda i, s: runnable_plan_of(m, i), torch.device("cpu"))
        rows = check_shapes(m, plan.captured.dynamic.dims, x, apply(m, plan), "cpu")
        refused = [r for r in plan.refused if r.why in ("illegal", "not_fuse")]
        print(f"{name}: {spec}: {len(plan.groups)} rewrites kept ({', '.join(sorted({g.pattern + ':' + g.variant for g in plan.groups}))}); "
              f"{len(refused)} refused over the range ({'; '.join(r.site_id + ' ' + r.reasons[0][:100] for r in refused[:2])}); {shapes_line(rows)}; {time.time() - t:.0f} s", flush=True)
    except Exception as exc:
        print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}; {time.time() - t:.0f} s", flush=True)
