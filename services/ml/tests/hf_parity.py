"""Reads Quark's exports with Hugging Face's own libraries.

  hf_parity.py logits MODEL_DIR IDS OUT   GPT2LMHeadModel logits for IDS ("1,2,3") -> OUT (safetensors)
  hf_parity.py peft_logits BASE_DIR ADAPTER_DIR IDS OUT
                                          the same, with the PEFT LoRA adapter loaded on the base
  hf_parity.py reward MODEL_DIR IDS OUT   GPT2ForSequenceClassification's score for IDS -> OUT
  hf_parity.py encode TOKENIZER_JSON      texts (a JSON list on stdin) -> their ids (JSON on stdout)
  hf_parity.py auto_encode CHECKPOINT_DIR the same with transformers' AutoTokenizer
"""
import json
import sys


def logits(model_dir, ids, out):
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "tied"
    with torch.no_grad():
        result = model(torch.tensor([[int(i) for i in ids.split(",")]])).logits
    save_file({"logits": result.contiguous()}, out)


def peft_logits(base_dir, adapter_dir, ids, out):
    import torch
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import GPT2LMHeadModel

    base = GPT2LMHeadModel.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    loaded = sum("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    assert loaded > 0, "no trained LoRA weight was loaded"
    if model.peft_config["default"].ensure_weight_tying:
        inner = model.base_model.model
        head, embedding = inner.lm_head.lora_A["default"].weight, inner.transformer.wte.lora_embedding_B["default"]
        assert head.data_ptr() == embedding.data_ptr(), "PEFT did not tie lm_head's adapter to the embedding's"
    with torch.no_grad():
        result = model(torch.tensor([[int(i) for i in ids.split(",")]])).logits
    save_file({"logits": result.contiguous()}, out)


def reward(model_dir, ids, out):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert type(model).__name__ == "GPT2ForSequenceClassification" and model.config.num_labels == 1
    with torch.no_grad():
        result = model(torch.tensor([[int(i) for i in ids.split(",")]])).logits
    save_file({"reward": result.contiguous()}, out)


def encode(path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    texts = json.load(sys.stdin)
    print(json.dumps([tokenizer.encode(t, add_special_tokens=False).ids for t in texts]))


def auto_encode(checkpoint_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    texts = json.load(sys.stdin)
    print(json.dumps([tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]))


if __name__ == "__main__":
    modes = {"logits": logits, "peft_logits": peft_logits, "reward": reward, "encode": encode, "auto_encode": auto_encode}
    modes[sys.argv[1]](*sys.argv[2:])
