//! The OpenAI surface clients and evaluation tools use, through the official `openai` client:
//! `models.retrieve`, prompts as lists of strings or of token ids, `echo` with `logprobs`
//! (a prompt's log-likelihood, equal to transformers' on the same checkpoint; and
//! lm-evaluation-harness's `local-completions` on a multiple-choice task from a local file
//! reads the same log-likelihoods), chat `logprobs` / `top_logprobs` (streamed too: the pieces'
//! readings are the whole reply's), content as text parts, the
//! `developer` role, `n` choices and `stream_options.include_usage`; tools, other content and malformed
//! bodies are refused with 400 in OpenAI's error shape.

use quark_e2e::{Cluster, GatewayTables, KEY, open, promotion, python_script};
use quark_events::bus::Publisher;
use quark_runtime::config::GatewaySettings;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openai_client_reads_models_log_likelihoods_and_parts() {
    let cluster = Cluster::start().await;
    let db = open::<GatewayTables>(cluster.dir.path(), "gateway.db").await;
    let url = cluster.gateway("a", &db, true, None).await;
    let promoted = promotion(&cluster.store, cluster.dir.path()).await;
    let publisher = Publisher::new(&cluster.broker.bus(), "registry").unwrap();
    publisher.publish(&promoted.clone().into()).await.unwrap();
    cluster.wait_until_serving(&url, promoted.model_id).await;

    // Refused with 400 in OpenAI's shape, naming the parameter where there is one.
    let chat = format!("{url}/v1/chat/completions");
    let completions = format!("{url}/v1/completions");
    let user = json!({"role": "user", "content": "Hi"});
    for (endpoint, request, param) in [
        (&chat, json!({"model": "champion"}), None),
        (&chat, json!({"model": "champion", "messages": "Hi"}), None),
        (
            &completions,
            json!({"model": "champion", "prompt": 7}),
            None,
        ),
        (
            &chat,
            json!({"model": "champion", "messages": [user], "tools": []}),
            Some("tools"),
        ),
        (
            &chat,
            json!({"model": "champion", "messages": [{"role": "tool", "content": "1"}]}),
            Some("messages"),
        ),
        (
            &chat,
            json!({"model": "champion", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            Some("messages"),
        ),
        (
            &chat,
            json!({"model": "champion", "messages": [user], "top_logprobs": 2}),
            Some("top_logprobs"),
        ),
        (
            &completions,
            json!({"model": "champion", "prompt": [[1, 99999]]}),
            Some("prompt"),
        ),
        (
            &completions,
            json!({"model": "champion", "prompt": "Hi", "logprobs": 6}),
            Some("logprobs"),
        ),
        (
            &completions,
            json!({"model": "champion", "prompt": "Hi", "max_tokens": 0}),
            Some("max_tokens"),
        ),
        (
            &completions,
            json!({"model": "champion", "prompt": ["a", "b"], "stream": true}),
            Some("stream"),
        ),
        (
            &chat,
            json!({"model": "champion", "messages": [user], "n": 9}),
            Some("n"),
        ),
    ] {
        let (status, body) = cluster.post(endpoint, request.clone(), None).await;
        assert_eq!(status, 400, "{request} → {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["param"].as_str(), param, "{request} → {body}");
    }
    let response = reqwest::Client::new()
        .post(&chat)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    let model_dir = cluster.dir.path().join("model");
    let script = format!(
        r#"
import math, openai, torch
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel
client = openai.OpenAI(base_url="{url}/v1", api_key="unused")
model_id = "{model_id}"
assert client.models.retrieve(model_id).id == model_id
assert client.models.retrieve("champion").id == model_id
try:
    client.models.retrieve("no-such-model")
    raise SystemExit("an unknown model must be 404")
except openai.NotFoundError:
    pass

# A log-likelihood as lm-evaluation-harness asks for one: echo, log-probabilities, no new token.
hf = GPT2LMHeadModel.from_pretrained("{model_dir}", dtype=torch.float32).eval()
tokenizer = Tokenizer.from_file("{model_dir}/tokenizer.json")
def reference(ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].log_softmax(-1)
prompts = ["To be, or not to be", "that is the question"]
reply = client.completions.create(model="champion", prompt=prompts, max_tokens=0, echo=True, logprobs=1, temperature=0)
assert [c.index for c in reply.choices] == [0, 1], reply
worst = 0.0
for prompt, choice in zip(prompts, reply.choices):
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    logprobs = reference(ids)
    assert choice.text == prompt, choice.text
    got = choice.logprobs.token_logprobs
    assert len(got) == len(ids) and got[0] is None, got
    for i in range(1, len(ids)):
        worst = max(worst, abs(got[i] - logprobs[i - 1, ids[i]].item()))
        top = choice.logprobs.top_logprobs[i]
        assert len(top) == 1 and abs(max(top.values()) - logprobs[i - 1].max().item()) < 1e-3, top
assert worst < 1e-3, worst

# The same prompt as token ids, one greedy token after it: its log-probability is the most likely one.
ids = tokenizer.encode(prompts[0], add_special_tokens=False).ids
more = client.completions.create(model="champion", prompt=[ids], max_tokens=1, echo=True, logprobs=2, temperature=0)
read = more.choices[0].logprobs.token_logprobs
assert len(read) == len(ids) + 1, read
assert all(abs(a - b) < 1e-5 for a, b in zip(read[1:len(ids)], reply.choices[0].logprobs.token_logprobs[1:])), read
assert abs(read[-1] - reference(ids)[-1].max().item()) < 1e-3, read[-1]
assert more.choices[0].text.startswith(prompts[0])

# n = 2: two choices, each the answer its seed gives alone (the request's seed, then the next).
two = client.chat.completions.create(model="champion", n=2, seed=11, max_tokens=6, temperature=1.0,
                                     messages=[{{"role": "user", "content": "Hi"}}])
assert [c.index for c in two.choices] == [0, 1], two
for index, choice in enumerate(two.choices):
    alone = client.chat.completions.create(model="champion", seed=11 + index, max_tokens=6, temperature=1.0,
                                           messages=[{{"role": "user", "content": "Hi"}}])
    assert alone.choices[0].message.content == choice.message.content, (alone, choice)
    assert two.usage.prompt_tokens == 2 * alone.usage.prompt_tokens, (two.usage, alone.usage)

# Chat: the developer role, content as text parts, log-probabilities with alternatives.
chat = client.chat.completions.create(
    model="champion", max_tokens=5, temperature=0, logprobs=True, top_logprobs=3,
    messages=[{{"role": "developer", "content": "Answer briefly."}},
              {{"role": "user", "content": [{{"type": "text", "text": "Who is"}}, {{"type": "text", "text": "Hamlet?"}}]}}])
content = chat.choices[0].logprobs.content
assert len(content) == chat.usage.completion_tokens > 0, chat
for entry in content:
    assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token, entry
    assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-6 and entry.logprob <= 0, entry
# The tokens spell the answer, less the special tokens the text leaves out.
shown = "".join(e.token for e in content if not (e.token.startswith("<|") and e.token.endswith("|>")))
assert shown == chat.choices[0].message.content, (shown, chat.choices[0].message.content)

# Streamed with log-probabilities: the pieces' readings, joined, are the whole reply's (same seed).
ask = dict(model="champion", max_tokens=12, temperature=1.0, seed=5, logprobs=True, top_logprobs=2,
           messages=[{{"role": "user", "content": "Who is Hamlet?"}}])
whole = client.chat.completions.create(**ask)
pieces = [c for c in client.chat.completions.create(stream=True, **ask) if c.choices]
read = [e for c in pieces if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
expected = whole.choices[0].logprobs.content
assert len(read) == len(expected) == whole.usage.completion_tokens > 0, (read, expected)
for got, want in zip(read, expected):
    assert got.token == want.token and abs(got.logprob - want.logprob) < 1e-6, (got, want)
    assert [t.token for t in got.top_logprobs] == [t.token for t in want.top_logprobs], (got, want)
assert "".join(c.choices[0].delta.content or "" for c in pieces) == whole.choices[0].message.content

# Completions streamed with echo: the prompt first, with its readings, then the answer's.
ask = dict(model="champion", prompt=prompts[0], max_tokens=6, echo=True, logprobs=2, temperature=0)
whole = client.completions.create(**ask).choices[0]
pieces = [c for c in client.completions.create(stream=True, **ask) if c.choices]
assert pieces[0].choices[0].text == prompts[0], pieces[0]
read = [c.choices[0].logprobs for c in pieces if c.choices[0].logprobs]
assert sum((r.tokens for r in read), []) == whole.logprobs.tokens, (read, whole.logprobs)
assert sum((r.text_offset for r in read), []) == whole.logprobs.text_offset, (read, whole.logprobs)
got = sum((r.token_logprobs for r in read), [])
assert got[0] is None and all(abs(a - b) < 1e-6 for a, b in zip(got[1:], whole.logprobs.token_logprobs[1:])), got
assert "".join(c.choices[0].text for c in pieces) == whole.text, (pieces, whole.text)

chunks = list(client.chat.completions.create(model="champion", max_tokens=4, temperature=0, stream=True,
                                             stream_options={{"include_usage": True}},
                                             messages=[{{"role": "user", "content": "Hi"}}]))
assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0, chunks[-1]
try:
    client.chat.completions.create(model="champion", messages=[{{"role": "user", "content": "Hi"}}], tools=[{{"type": "function", "function": {{"name": "f"}}}}])
    raise SystemExit("tools must be refused")
except openai.BadRequestError as e:
    assert "not supported" in str(e), e
print("openai surface ok; worst log-probability difference from transformers", worst)
"#,
        url = url,
        model_id = promoted.model_id,
        model_dir = model_dir.display(),
    );
    let out = python_script(&script);
    eprintln!("{}", String::from_utf8_lossy(&out));
    lm_eval_multiple_choice(&url, &model_dir, cluster.dir.path());
}

/// lm-evaluation-harness's `local-completions` model on a multiple-choice task built from a
/// local file, its tokenizer the checkpoint's (transformers' AutoTokenizer reads it as it is,
/// through the checkpoint's tokenizer_config.json): the log-likelihood it reads for each
/// choice is transformers' on the same checkpoint.
fn lm_eval_multiple_choice(url: &str, model_dir: &std::path::Path, dir: &std::path::Path) {
    let tasks = dir.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let questions = [
        ("To be, or not to", ["be", "go", "see"], 0),
        ("that is the", ["question", "answer", "end"], 0),
        ("Who is", ["Hamlet?", "Yorick?", "there?"], 2),
    ];
    let data: String = questions
        .iter()
        .map(|(q, choices, answer)| {
            format!(
                "{}\n",
                json!({"question": q, "choices": choices, "answer": answer})
            )
        })
        .collect();
    std::fs::write(tasks.join("mc.jsonl"), data).unwrap();
    let task = format!(
        "task: quark_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\n\
         test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{{{question}}}}\"\n\
         doc_to_choice: \"{{{{choices}}}}\"\ndoc_to_target: \"{{{{answer}}}}\"\n\
         metric_list:\n  - metric: acc\n",
        tasks.join("mc.jsonl").display()
    );
    std::fs::write(tasks.join("quark_mc.yaml"), task).unwrap();
    let script = format!(
        r#"
import ast, glob, json, os, subprocess, sys, torch
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel
out = "{out}"
args = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
        "model=champion,base_url={url}/v1/completions,tokenizer_backend=huggingface,tokenizer={model_dir},num_concurrent=1,max_retries=1,tokenized_requests=True",
        "--tasks", "quark_mc", "--include_path", "{tasks}", "--output_path", out, "--log_samples", "--batch_size", "1"]
run = subprocess.run(args, capture_output=True, text=True, env={{**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}})
assert run.returncode == 0, run.stderr[-4000:]
samples = [json.loads(l) for f in glob.glob(out + "/**/samples_quark_mc_*.jsonl", recursive=True) for l in open(f)]
assert len(samples) == 3, samples
hf = GPT2LMHeadModel.from_pretrained("{model_dir}", dtype=torch.float32).eval()
tokenizer = Tokenizer.from_file("{model_dir}/tokenizer.json")
worst, read = 0.0, 0
for sample in samples:
    requests = sample["arguments"]
    requests = list(requests.values()) if isinstance(requests, dict) else requests
    assert len(requests) == len(sample["resps"]) == 3, sample
    for request, resp in zip(requests, sample["resps"]):
        context, continuation = (request["arg_0"], request["arg_1"]) if isinstance(request, dict) else request
        ctx = tokenizer.encode(context, add_special_tokens=False).ids
        full = tokenizer.encode(context + continuation, add_special_tokens=False).ids
        with torch.no_grad():
            logprobs = hf(torch.tensor([full])).logits[0].log_softmax(-1)
        expected = sum(logprobs[i - 1, full[i]].item() for i in range(len(ctx), len(full)))
        # lm-eval logs each response as (log-likelihood, is_greedy), written out as text.
        value = resp[0] if not isinstance(resp[0], str) else ast.literal_eval(resp[0])
        worst = max(worst, abs(float(value[0]) - expected))
        read += 1
assert read == 9 and worst < 1e-3, (read, worst)
print("lm-eval read", read, "choices; worst log-likelihood difference from transformers", worst)
"#,
        out = dir.join("lm-eval").display(),
        url = url,
        model_dir = model_dir.display(),
        tasks = tasks.display(),
    );
    let out = python_script(&script);
    eprintln!("{}", String::from_utf8_lossy(&out));
}

/// The gateway fuzzed from its own OpenAPI document by schemathesis (PyPI): generated and
/// mutated requests on every route, with and without the key, against a gateway serving a
/// real model. Every check schemathesis has passes: no 5xx, every answer's status, content
/// type and body as the document says (every 4xx in OpenAI's error shape), malformed
/// requests refused, valid ones accepted, routes that need the key refused without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_failure_in_the_gateway() {
    let cluster = Cluster::start().await;
    let db = open::<GatewayTables>(cluster.dir.path(), "gateway.db").await;
    let settings = GatewaySettings {
        instance: "fuzzed".into(),
        api_keys: vec![KEY.into()],
        // Generation is not what is fuzzed: short answers keep the run short.
        max_tokens: 8,
        ..quark_runtime::Settings::default().gateway
    };
    let url = cluster
        .gateway_with(settings, &db, true, None, |_| {})
        .await;
    let promoted = promotion(&cluster.store, cluster.dir.path()).await;
    let publisher = Publisher::new(&cluster.broker.bus(), "registry").unwrap();
    publisher.publish(&promoted.clone().into()).await.unwrap();
    cluster.wait_until_serving(&url, promoted.model_id).await;

    let document = cluster.get(&format!("{url}/openapi.json")).await;
    let paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        [
            "/metrics",
            "/v1/admin/retrain",
            "/v1/admin/status",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/feedback",
            "/v1/models",
            "/v1/models/{id}",
            "/v1/moderations",
        ]
    );
    let venv = std::env::var("QUARK_VENV").expect("QUARK_VENV (scripts/env)");
    // Every check but positive_data_acceptance: some refusals depend on more than one field
    // or on the model (top_logprobs without logprobs, token ids past the vocabulary, a stream
    // of several prompts), which no schema says, so a schema-valid request may get a 400.
    let run = tokio::process::Command::new(format!("{venv}/bin/schemathesis"))
        .args(["--no-color", "run", &format!("{url}/openapi.json")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "40", "--seed", "17", "--workers", "2"])
        .args(["--header", &format!("Authorization: Bearer {KEY}")])
        .args(["--generation-database", "none"])
        .current_dir(cluster.dir.path())
        .output()
        .await
        .expect("schemathesis (scripts/bootstrap installs it)");
    let said = String::from_utf8_lossy(&run.stdout);
    eprintln!("{said}");
    assert!(
        run.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // "Test cases:" then "  <n> generated, <n> passed…"
    let generated: u64 = said
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of test cases in:\n{said}"));
    assert!(generated > 500, "only {generated} cases");
    cluster.stop().await;
}
