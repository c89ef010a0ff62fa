//! Retrieval helps: a small model taught to answer from the passages the gateway puts before
//! a question (in the gateway's own prompt layout, on facts it never sees again) answers
//! questions about documents indexed after its training. With retrieval its answers hold the
//! right password; without, they cannot, for the passwords are nowhere in its training. Both
//! rates are printed and the gap between them asserted.

use quark_e2e::{Cluster, GatewayTables, encoder_dir, open, promotion_of};
use quark_events::Event;
use quark_events::bus::Publisher;
use quark_gateway::knowledge::{Knowledge, with_passages};
use quark_ml::chat::{self, Message, Role};
use quark_ml::data::Packed;
use quark_ml::gpt::{Gpt, GptConfig};
use quark_ml::optim::{AdamWConfig, Schedule};
use quark_ml::tokenizer;
use quark_ml::train::{TrainConfig, Trainer};
use quark_retrieval::retriever::Retriever;
use quark_retrieval::store::{Embedded, Hit, Passage, SearchMode, StoreConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const COLOURS: [&str; 12] = [
    "red", "blue", "green", "amber", "grey", "white", "black", "violet", "golden", "silver",
    "copper", "scarlet",
];
const THINGS: [&str; 12] = [
    "fox", "owl", "hare", "crow", "wolf", "bear", "stag", "swan", "lark", "toad", "moth", "wren",
];
/// Room for the prompt (about 130 characters) and the longest answer.
const CONTEXT: i64 = 192;
const ANSWER_TOKENS: u64 = 56;

#[derive(Clone)]
struct Fact {
    colour: &'static str,
    thing: &'static str,
    password: String,
}

impl Fact {
    fn sentence(&self) -> String {
        format!(
            "The password of the {} {} door is {}.",
            self.colour, self.thing, self.password
        )
    }

    fn question(&self) -> String {
        format!(
            "What is the password of the {} {} door?",
            self.colour, self.thing
        )
    }

    fn document_id(&self) -> String {
        format!("door-{}-{}", self.colour, self.thing)
    }

    /// The fact as the index returns it.
    fn hit(&self) -> Hit {
        let text = self.sentence();
        Hit {
            passage: Passage {
                id: self.document_id(),
                source: format!("{}.txt", self.document_id()),
                document_id: self.document_id(),
                dataset_id: "doors".into(),
                start: 0,
                end: text.len() as u64,
                text,
            },
            score: 1.0,
        }
    }
}

fn password(rng: &mut StdRng) -> String {
    let len = rng.random_range(4..=7);
    (0..len)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect()
}

/// `held_out` facts on distinct doors, and `taught` others whose passwords differ from theirs.
fn facts(rng: &mut StdRng, held_out: usize, taught: usize) -> (Vec<Fact>, Vec<Fact>) {
    let mut doors: Vec<(&str, &str)> = COLOURS
        .iter()
        .flat_map(|c| THINGS.iter().map(move |t| (*c, *t)))
        .collect();
    doors.shuffle(rng);
    let unseen: Vec<Fact> = doors[..held_out]
        .iter()
        .map(|&(colour, thing)| Fact {
            colour,
            thing,
            password: password(rng),
        })
        .collect();
    let mut seen = Vec::with_capacity(taught);
    while seen.len() < taught {
        let password = password(rng);
        if unseen.iter().all(|f| f.password != password) {
            seen.push(Fact {
                colour: COLOURS[rng.random_range(0..COLOURS.len())],
                thing: THINGS[rng.random_range(0..THINGS.len())],
                password,
            });
        }
    }
    (unseen, seen)
}

/// A two-layer model taught to answer a question from the one passage before it, laid out
/// by the gateway's own [`with_passages`]; returns its checkpoint.
fn reader(taught: &[Fact], dir: &Path) -> PathBuf {
    let alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,?!'[]0123456789\n";
    let tok = tokenizer::train_chars(alphabet).unwrap();
    let examples: Vec<_> = taught
        .iter()
        .map(|fact| {
            let question = [Message::new(Role::User, fact.question())];
            let (mut messages, used) = with_passages(&question, vec![fact.hit()], |_| true);
            assert_eq!(used.len(), 1);
            messages.push(Message::new(Role::Assistant, fact.sentence()));
            chat::render(&tok, &messages).unwrap()
        })
        .collect();
    let steps = 1500;
    let config = TrainConfig {
        batch_size: 32,
        grad_accum: 1,
        max_steps: steps,
        schedule: Schedule {
            max_lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 20,
            decay_steps: steps,
        },
        adamw: AdamWConfig::default(),
        grad_clip: 1.0,
        eval_interval: 0,
        eval_windows: None,
        checkpoint_interval: 0,
        log_interval: 50,
        seed: 7,
        kl_weight: 0.0,
        objective: Default::default(),
    };
    let packed = Packed::new(&examples, config.batch_size, CONTEXT as usize, 0, 7).unwrap();
    assert_eq!(packed.truncated, 0, "every example fits the context");
    let shape = GptConfig {
        vocab_size: tok.get_vocab_size(true) as i64,
        block_size: CONTEXT,
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        dropout: 0.0,
        layout: Default::default(),
    };
    let model = Gpt::new(shape, tch::Device::Cpu, 7).unwrap();
    let mut run = Trainer::start(model, tok, config, None, &dir.join("reader")).unwrap();
    let outcome = run
        .run(&packed, None, |p| {
            if let Some(loss) = p.loss.filter(|_| p.step % 100 == 0) {
                println!("reader step {}: loss {loss:.3}", p.step);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    outcome.checkpoint
}

/// Indexes each fact as its own document, as the indexer would a one-sentence file.
async fn index(retriever: &Retriever, facts: &[Fact]) {
    let texts: Vec<String> = facts.iter().map(Fact::sentence).collect();
    let vectors = retriever.embed(texts).await.unwrap();
    let rows: Vec<Embedded> = facts
        .iter()
        .zip(vectors)
        .map(|(fact, vector)| Embedded {
            passage: fact.hit().passage,
            vector,
        })
        .collect();
    let appended = retriever.store().append("knowledge", &rows).await.unwrap();
    assert_eq!(appended.rows_total, facts.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_hold_the_unseen_fact_far_more_often_with_retrieval_than_without() {
    let cluster = Cluster::start().await;
    let data = cluster.dir.path().to_path_buf();
    let mut rng = StdRng::seed_from_u64(1337);
    let (unseen, taught) = facts(&mut rng, 40, 4000);
    let checkpoint = tokio::task::block_in_place(|| reader(&taught, &data));

    let lance = data.join("knowledge").display().to_string();
    let retriever = Retriever::open(&lance, &encoder_dir(), StoreConfig::default(), 32)
        .await
        .unwrap();
    index(&retriever, &unseen).await;
    let knowledge = Knowledge {
        model: retriever.model().to_string(),
        retriever: Arc::new(retriever),
        index: "knowledge".into(),
        k: 1,
        mode: SearchMode::Hybrid,
    };
    let gateway_db = open::<GatewayTables>(&data, "gateway.db").await;
    let url = cluster
        .gateway("g", &gateway_db, true, Some(knowledge))
        .await;
    let promoted = promotion_of(&cluster.store, &checkpoint).await;
    Publisher::new(&cluster.broker.bus(), "registry")
        .unwrap()
        .publish(&Event::ModelPromoted(promoted.clone()))
        .await
        .unwrap();
    cluster.wait_until_serving(&url, promoted.model_id).await;

    let (mut with, mut without, mut found) = (0, 0, 0);
    for fact in &unseen {
        let ask = |retrieval: bool| {
            json!({"model": "champion", "messages": [{"role": "user", "content": fact.question()}],
                "max_tokens": ANSWER_TOKENS, "temperature": 0, "quark": {"retrieval": retrieval}})
        };
        let endpoint = format!("{url}/v1/chat/completions");
        let (status, body) = cluster.post(&endpoint, ask(true), None).await;
        assert_eq!(status, 200, "{body}");
        let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
        with += usize::from(answer.contains(&fact.password));
        found += usize::from(body["quark"]["sources"][0]["document_id"] == fact.document_id());
        let (status, body) = cluster.post(&endpoint, ask(false), None).await;
        assert_eq!((status, body.get("quark")), (200, None), "{body}");
        let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
        without += usize::from(answer.contains(&fact.password));
    }
    let n = unseen.len();
    println!(
        "answers holding the password: {with}/{n} with retrieval (the right passage first for \
         {found}/{n}), {without}/{n} without"
    );
    assert!(found * 10 >= n * 9, "retrieval found {found}/{n}");
    assert!(with * 5 >= n * 3, "with retrieval {with}/{n}");
    assert!(without * 20 <= n, "without retrieval {without}/{n}");
    cluster.stop().await;
}
