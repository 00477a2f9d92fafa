"""Architectures outside the zoo, tiny random configs: every legal site forced with its first variant, verified."""
import sys, torch, warnings
warnings.filterwarnings("ignore")
sys.path[:0] = ["/work/main", "/work/main/tests"]
from test_gate import first_variant_plan, verify_plan, TINY_SPEC, CandidateSet
sys.path.insert(0, "/work/main/models/zoo")
from _zoolib import import_library
T = import_library("transformers")

def ids(b=2, s=12, v=128):
    return torch.randint(0, v, (b, s), generator=torch.Generator().manual_seed(0))

class LastHidden(torch.nn.Module):
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): return self.m(x).last_hidden_state

models = {
  "mistral": lambda: LastHidden(T.MistralModel(T.MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, sliding_window=8, attn_implementation="eager"))),
  "gpt_neox": lambda: LastHidden(T.GPTNeoXModel(T.GPTNeoXConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.5, attn_implementation="eager"))),
  "qwen3": lambda: LastHidden(T.Qwen3Model(T.Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16))),
  "olmo": lambda: LastHidden(T.OlmoModel(T.OlmoConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4))),
}
try:
    timm = import_library("timm")
    models["timm_convnext_atto"] = lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=10)
    models["timm_vit_layerscale"] = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, init_values=1e-5, img_size=64)
except Exception as e:
    print("timm", e)
for name, make in models.items():
    for dt in (torch.float32, torch.bfloat16):
        try:
            torch.manual_seed(0)
            m = make().eval().to(dt)
            x = (torch.randn(2, 3, 64, 64).to(dt),) if name.startswith("timm") else (ids(),)
            plan = first_variant_plan(m, x)
            r = verify_plan(m, x, plan, spec=TINY_SPEC, candidates=CandidateSet.uncompiled(captured=False))
            app = [d for d in r.rewrites if d["applied"]]
            pats = sorted({d["pattern"] for d in app})
            print(f"{name} {str(dt)[6:]}: ok={r.ok} ref={r.reference} applied {len(app)}/{len(r.rewrites)} {pats} "
                  f"worst {max(o.error / o.limit for o in r.outputs):.2f} warnings {len(r.warnings)} | {r.reason[:80]}", flush=True)
        except Exception as e:
            print(f"{name} {dt}: CRASH {type(e).__name__}: {str(e)[:200]}", flush=True)
