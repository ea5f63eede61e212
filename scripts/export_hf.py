"""Export a lenx checkpoint as a transformers model directory: `python scripts/export_hf.py <ckpt> <out_dir>`.

rope / rope_partial -> GPTNeoXForCausalLM, alibi -> MptForCausalLM, plus a fast tokenizer and a model card; load it
with transformers.AutoModelForCausalLM.from_pretrained(out_dir) and AutoTokenizer.from_pretrained(out_dir).
Needs `pip install transformers` (not a lenx dependency).
"""

import argparse

from lenx.errors import user_errors
from lenx.export import export_hf

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("out_dir")
    args = p.parse_args()
    with user_errors():
        print(f"exported to {export_hf(args.ckpt, args.out_dir)}")
