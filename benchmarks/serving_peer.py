"""The serving peer: Hugging Face transformers' batched `generate` behind a minimal
OpenAI-style HTTP wrapper (`POST /v1/completions`, streamed or not).

Requests that arrive while a batch runs wait; when it ends, every waiting request (up to
MAX_BATCH) is generated as the next batch, left-padded, in one `generate` call of the longest
`max_tokens` asked (static batching: the batch runs until its longest member ends). The
answer is sent whole when its batch ends: `generate` streams only batches of one, so a streamed
reply is one chunk of text, the usage and `[DONE]`.

  serving_peer.py CHECKPOINT_DIR PORT THREADS [MAX_BATCH]
"""
import json
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

END = "<|endoftext|>"


def serve(checkpoint, port, threads, max_batch):
    torch.set_num_threads(threads)
    model = GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{checkpoint}/tokenizer.json", eos_token=END, pad_token=END)
    tok.padding_side = "left"
    waiting = queue.Queue()

    def batches():
        while True:
            batch = [waiting.get()]
            while len(batch) < max_batch:
                try:
                    batch.append(waiting.get_nowait())
                except queue.Empty:
                    break
            prompts = [r["prompt"] for r, _ in batch]
            longest = max(r["max_tokens"] for r, _ in batch)
            encoded = tok(prompts, return_tensors="pt", padding=True)
            torch.manual_seed(batch[0][0].get("seed", 0))
            with torch.no_grad():
                out = model.generate(**encoded, max_new_tokens=longest, min_new_tokens=longest, do_sample=True,
                                     temperature=batch[0][0].get("temperature", 1.0), top_k=0, pad_token_id=tok.pad_token_id)
            width = encoded["input_ids"].shape[1]
            for i, (request, reply) in enumerate(batch):
                ids = out[i, width:width + request["max_tokens"]].tolist()
                reply.put((tok.decode(ids), len(ids), int(encoded["attention_mask"][i].sum())))

    threading.Thread(target=batches, daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["content-length"])))
            reply = queue.Queue()
            waiting.put((request, reply))
            text, tokens, prompt_tokens = reply.get()
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            if request.get("stream"):
                events = [{"choices": [choice], "usage": None}, {"choices": [], "usage": usage}]
                body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self.send(body.encode(), "text/event-stream")
            else:
                self.send(json.dumps({"object": "text_completion", "choices": [choice], "usage": usage}).encode(), "application/json")

        def send(self, body, kind):
            self.send_response(200)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    checkpoint, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    serve(checkpoint, port, threads, int(sys.argv[4]) if len(sys.argv) > 4 else 64)
