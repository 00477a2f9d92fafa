import sys, time, torch
sys.path.insert(0, "/work/main")
from fxfusion.graph.loader import load_model
how = sys.argv[1]
lm = load_model("models/zoo/timm_resnet18.py")
m, x = lm.model.eval(), lm.example_inputs
with torch.no_grad():
    if how == "options":
        c = torch.compile(m, options={"freezing": True})
    elif how == "global":
        torch._inductor.config.freezing = True
        c = torch.compile(m)
    else:
        c = torch.compile(m)
    c(*x); c(*x)
    t0 = time.perf_counter()
    for _ in range(30): c(*x)
    print(how, (time.perf_counter() - t0) / 30 * 1e3, "ms")
