//! Continuous batching (Orca's iteration-level scheduling): one thread owns the model and
//! runs every generation asked of it in one batch, a decode step at a time. Generations join
//! the running batch between any two steps and leave it as soon as they end, so a short
//! answer never waits for a long one and a new request never waits for the batch to drain.
//!
//! Each iteration admits waiting requests in arrival order while the batch has a free row
//! and the token budget (prompt plus requested tokens of every running generation) has room,
//! up to `max_prefill_tokens` of prompts, then runs one step: a single forward pass over
//! the running rows' next tokens and the admitted prompts packed after them (Sarathi's
//! mixed batch, whole prompts), so a joining request costs the others no pass of its own.
//! Prefill is bounded so a burst of long prompts slows one step at a time, no more.
//!
//! Each generation decides its tokens exactly as [`generate`](crate::generate::generate)
//! would (its own sampler and seed, stops, budget, streaming); batching changes only how
//! many run at once.

use crate::MlError;
use crate::generate::{
    Decoding, FinishReason, GenerateOptions, Generation, Piece, TokenLogprob, check,
};
use crate::gpt::{Gpt, SlotCache};
use crate::sample::Scores;
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use tokenizers::Tokenizer;

/// How much runs at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Generations in the running batch.
    pub max_requests: usize,
    /// Prompt and requested tokens of all running generations together (each capped by
    /// the model's context): what bounds the cache's memory.
    pub max_tokens: usize,
    /// Prompt tokens read in one step beside the running rows (one prompt is always taken).
    pub max_prefill_tokens: usize,
    /// libtorch intra-op threads of the batch's own thread (0: the process-wide count).
    pub threads: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_requests: 64,
            max_tokens: 16_384,
            max_prefill_tokens: 1_024,
            threads: 0,
        }
    }
}

impl BatchLimits {
    fn check(&self) -> Result<(), MlError> {
        if self.max_requests == 0 || self.max_tokens == 0 {
            return Err(MlError::Config(format!(
                "batch limits must be positive: {self:?}"
            )));
        }
        Ok(())
    }
}

/// Generates for each of `requests` (prompt and options) on the calling thread, in one
/// continuous batch run as an [`Engine`] runs it, for work that has many answers to ask at
/// once (an evaluation). The generations come back in the order asked, each what
/// [`generate`](crate::generate::generate) gives alone; a request that cannot run fails the
/// call. The batch runs with the calling thread's intra-op threads (`limits.threads` aside).
pub fn generate_all(
    model: &Gpt,
    tokenizer: &Tokenizer,
    requests: Vec<(Vec<u32>, GenerateOptions)>,
    limits: BatchLimits,
) -> Result<Vec<Generation>, MlError> {
    limits.check()?;
    let mut scheduler = Scheduler::new(model, tokenizer, limits, Arc::default());
    let asked: Vec<Pending> = requests
        .into_iter()
        .map(|(prompt, options)| {
            let (request, pending) = Request::new(prompt, options);
            scheduler.waiting.push_back(request);
            pending
        })
        .collect();
    tch::no_grad(|| {
        while !(scheduler.running.is_empty() && scheduler.waiting.is_empty()) {
            scheduler.iterate();
        }
    });
    asked
        .into_iter()
        .map(|pending| pending.wait(|_| ControlFlow::Continue(())))
        .collect()
}

/// What a generation reports to whoever asked for it.
enum Report {
    /// A piece of text as it is settled, the readings of the tokens behind it, and how many
    /// tokens make the text so far.
    Text(String, Vec<TokenLogprob>, usize),
    Done(Result<Generation, MlError>),
}

struct Request {
    prompt: Vec<u32>,
    options: GenerateOptions,
    reports: Sender<Report>,
    /// Set by the asker when it wants no more text.
    cancelled: Arc<AtomicBool>,
}

impl Request {
    /// A request, and the asker's end of it.
    fn new(prompt: Vec<u32>, options: GenerateOptions) -> (Request, Pending) {
        let (reports, inbox) = channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let request = Request {
            prompt,
            options,
            reports,
            cancelled: cancelled.clone(),
        };
        let pending = Pending {
            reports: inbox,
            cancelled,
        };
        (request, pending)
    }
}

type Work = Box<dyn FnOnce(&Gpt, &Tokenizer) + Send>;

enum Job {
    Generate(Request),
    /// Other work on the model (prompt scoring), between two decode steps.
    Run(Work),
}

/// What the batch is doing, as the scheduler last left it.
#[derive(Default)]
struct Counters {
    running: AtomicUsize,
    waiting: AtomicUsize,
    peak_running: AtomicUsize,
    decode_steps: AtomicUsize,
}

/// A reading of the batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Generations in the running batch.
    pub running: usize,
    /// Requests waiting to be admitted.
    pub waiting: usize,
    /// The most generations that ran at once.
    pub peak_running: usize,
    /// Steps run: forward passes, each giving every running generation a token (and
    /// reading the prompts admitted for it).
    pub decode_steps: usize,
}

/// A model served by a continuous batch on a thread of its own. Dropping it lets the thread
/// finish what it runs and end.
pub struct Engine {
    jobs: Sender<Job>,
    counters: Arc<Counters>,
}

/// A generation asked of an [`Engine`], not yet read.
pub struct Pending {
    reports: Receiver<Report>,
    cancelled: Arc<AtomicBool>,
}

impl Engine {
    /// Moves `model` onto a new thread that batches every generation asked of it.
    pub fn spawn(model: Gpt, tokenizer: Tokenizer, limits: BatchLimits) -> Result<Engine, MlError> {
        limits.check()?;
        let (jobs, inbox) = channel();
        let (started, start) = channel();
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        std::thread::Builder::new()
            .name("quark-batch".into())
            .spawn(move || {
                let _no_grad = tch::no_grad_guard();
                let limited = match limits.threads {
                    0 => Ok(0),
                    n => crate::threads::limit_this_thread(n),
                };
                let ready = limited.is_ok();
                let _ = started.send(limited);
                if ready {
                    Scheduler::new(&model, &tokenizer, limits, shared).run(inbox)
                }
            })
            .map_err(|e| MlError::Config(format!("cannot start the batch thread: {e}")))?;
        start.recv().map_err(|_| stopped())??;
        Ok(Engine { jobs, counters })
    }

    /// What the batch is doing now.
    pub fn load(&self) -> Load {
        let read = |c: &AtomicUsize| c.load(Ordering::Relaxed);
        let c = &self.counters;
        Load {
            running: read(&c.running),
            waiting: read(&c.waiting),
            peak_running: read(&c.peak_running),
            decode_steps: read(&c.decode_steps),
        }
    }

    /// Generates as [`generate`](crate::generate::generate) does, in the running batch;
    /// blocks the calling thread until the generation ends. `on_text` runs on the calling
    /// thread; when it breaks, the generation ends there (`Cancelled`).
    pub fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: impl FnMut(Piece) -> ControlFlow<()>,
    ) -> Result<Generation, MlError> {
        self.submit(prompt, options)?.wait(on_text)
    }

    /// Asks for a generation without waiting for it: it joins the batch in the order asked.
    pub fn submit(&self, prompt: &[u32], options: &GenerateOptions) -> Result<Pending, MlError> {
        let (request, pending) = Request::new(prompt.to_vec(), options.clone());
        self.jobs
            .send(Job::Generate(request))
            .map_err(|_| stopped())?;
        Ok(pending)
    }

    /// Runs `work` on the model between two decode steps and returns what it returns.
    pub fn with_model<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Gpt, &Tokenizer) -> T + Send + 'static,
    ) -> Result<T, MlError> {
        let (tx, rx) = channel();
        let job: Work = Box::new(move |model, tokenizer| {
            let _ = tx.send(work(model, tokenizer));
        });
        self.jobs.send(Job::Run(job)).map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())
    }
}

impl Pending {
    /// Reads the generation as it goes (see [`Engine::generate`]).
    pub fn wait(
        self,
        mut on_text: impl FnMut(Piece) -> ControlFlow<()>,
    ) -> Result<Generation, MlError> {
        // Where the asker stopped listening: tokens so far and the text it was shown.
        let mut cut: Option<(usize, String)> = None;
        let mut shown = String::new();
        loop {
            match self.reports.recv().map_err(|_| stopped())? {
                Report::Text(..) if cut.is_some() => {}
                Report::Text(text, logprobs, tokens) => {
                    shown.push_str(&text);
                    let piece = Piece {
                        text: &text,
                        logprobs: &logprobs,
                    };
                    if on_text(piece).is_break() {
                        self.cancelled.store(true, Ordering::Relaxed);
                        cut = Some((tokens, std::mem::take(&mut shown)));
                    }
                }
                Report::Done(result) => return result.map(|g| cut_at(g, cut)),
            }
        }
    }
}

fn stopped() -> MlError {
    MlError::Config("the batch thread has stopped".into())
}

/// A generation cut where its asker stopped listening, as `generate` leaves one.
fn cut_at(mut g: Generation, cut: Option<(usize, String)>) -> Generation {
    if let Some((tokens, text)) = cut {
        g.tokens.truncate(tokens);
        g.logprobs.truncate(tokens);
        g.text = text;
        g.finish = FinishReason::Cancelled;
    }
    g
}

fn report(piece: Piece, tokens: usize) -> Report {
    Report::Text(piece.text.into(), piece.logprobs.to_vec(), tokens)
}

/// A generation in the running batch.
struct Running {
    decoding: Decoding,
    request: Request,
    /// Its share of the token budget.
    budget: usize,
}

impl Running {
    /// Feeds its row of a step's scores; `Break` when it is over.
    fn step(
        &mut self,
        row: (&Scores, usize),
        tokenizer: &Tokenizer,
    ) -> Result<ControlFlow<()>, MlError> {
        if self.request.cancelled.load(Ordering::Relaxed) {
            return Ok(ControlFlow::Break(()));
        }
        let reports = &self.request.reports;
        let tokens = self.decoding.tokens().len() + 1;
        let mut on_text = |piece: Piece| match reports.send(report(piece, tokens)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        };
        self.decoding.step(row, tokenizer, &mut on_text)
    }

    fn end(self, failure: Option<MlError>) {
        let reports = self.request.reports;
        let result = match failure {
            Some(e) => Err(e),
            None => {
                let mut on_text = |piece: Piece| {
                    let _ = reports.send(report(piece, usize::MAX));
                    ControlFlow::Continue(())
                };
                Ok(self.decoding.finish(&mut on_text))
            }
        };
        let _ = reports.send(Report::Done(result));
    }
}

struct Scheduler<'m> {
    model: &'m Gpt,
    tokenizer: &'m Tokenizer,
    limits: BatchLimits,
    waiting: VecDeque<Request>,
    /// Row `i` of `cache` is `running[i]`.
    running: Vec<Running>,
    cache: SlotCache,
    counters: Arc<Counters>,
}

impl<'m> Scheduler<'m> {
    fn new(
        model: &'m Gpt,
        tokenizer: &'m Tokenizer,
        limits: BatchLimits,
        counters: Arc<Counters>,
    ) -> Scheduler<'m> {
        let cache = SlotCache::new(model.config.block_size);
        Scheduler {
            model,
            tokenizer,
            limits,
            waiting: VecDeque::new(),
            running: vec![],
            cache,
            counters,
        }
    }

    /// Iterates until every `Engine` handle is gone and nothing is left to run.
    fn run(mut self, inbox: Receiver<Job>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match inbox.recv() {
                    Ok(job) => self.take(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = inbox.try_recv() {
                self.take(job);
            }
            self.iterate();
            self.count();
        }
    }

    fn count(&self) {
        let c = &self.counters;
        c.running.store(self.running.len(), Ordering::Relaxed);
        c.waiting.store(self.waiting.len(), Ordering::Relaxed);
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Generate(request) => self.waiting.push_back(request),
            Job::Run(work) => work(self.model, self.tokenizer),
        }
    }

    /// One iteration: admit what fits, then one step for the batch, admitted rows included.
    fn iterate(&mut self) {
        let decoding = self.running.len();
        self.admit();
        if self.running.is_empty() {
            return;
        }
        if let Err(e) = self.step(decoding) {
            // A failed step leaves the batch's cache unusable: every running generation fails.
            let message = e.to_string();
            for running in self.running.drain(..) {
                running.end(Some(MlError::Config(format!(
                    "generation failed: {message}"
                ))));
            }
            self.cache = SlotCache::new(self.model.config.block_size);
        }
    }

    fn used_budget(&self) -> usize {
        self.running.iter().map(|r| r.budget).sum()
    }

    /// Takes waiting requests in order while they fit; each joins the end of the running
    /// batch, its prompt read by the next step. A request that cannot run ends here.
    fn admit(&mut self) {
        let block = self.model.config.block_size as usize;
        let mut prefilled = 0;
        while let Some(next) = self.waiting.front() {
            let budget = (next.prompt.len() + next.options.max_tokens).min(block);
            let room = self.running.is_empty()
                || (self.running.len() < self.limits.max_requests
                    && self.used_budget() + budget <= self.limits.max_tokens);
            let prefill_room =
                prefilled == 0 || prefilled + next.prompt.len() <= self.limits.max_prefill_tokens;
            if !(room && prefill_room) {
                return;
            }
            let request = self.waiting.pop_front().expect("a waiting request");
            if let Err(e) = check(&request.prompt, &request.options, block) {
                let _ = request.reports.send(Report::Done(Err(e)));
                continue;
            }
            let running = Running {
                decoding: Decoding::new(request.prompt.len(), request.options.clone(), block),
                request,
                budget,
            };
            if !running.decoding.wants_more() {
                running.end(None);
                continue;
            }
            prefilled += running.request.prompt.len();
            self.running.push(running);
        }
    }

    /// One forward pass: the first `decoding` rows take their last token, the rows after
    /// them their prompts; every row picks its next token and the rows that end leave.
    fn step(&mut self, decoding: usize) -> Result<(), MlError> {
        let (old, new) = self.running.split_at(decoding);
        let last: Vec<u32> = old
            .iter()
            .map(|r| {
                *r.decoding
                    .tokens()
                    .last()
                    .expect("a running row has a token")
            })
            .collect();
        let prompts: Vec<&[u32]> = new.iter().map(|r| r.request.prompt.as_slice()).collect();
        let logits = self.model.step(&last, &prompts, &mut self.cache)?;
        let temperatures: Vec<f64> = self
            .running
            .iter()
            .map(|r| r.request.options.temperature)
            .collect();
        let scores = Scores::new(&logits, &temperatures)?;
        let c = &self.counters;
        c.decode_steps.fetch_add(1, Ordering::Relaxed);
        c.peak_running
            .fetch_max(self.running.len(), Ordering::Relaxed);
        let mut ended = vec![];
        for (row, running) in self.running.iter_mut().enumerate() {
            match running.step((&scores, row), self.tokenizer) {
                Ok(ControlFlow::Continue(())) => {}
                Ok(ControlFlow::Break(())) => ended.push((row, None)),
                Err(e) => ended.push((row, Some(e))),
            }
        }
        // From the last: the row that moves into a removed one has not ended.
        let mut finished = Vec::with_capacity(ended.len());
        for (row, failure) in ended.into_iter().rev() {
            self.cache.swap_remove(row)?;
            finished.push((self.running.swap_remove(row), failure));
        }
        // Counted before the askers hear they are done: a load read after an answer has
        // arrived no longer shows it running.
        self.count();
        for (generation, failure) in finished {
            generation.end(failure);
        }
        Ok(())
    }
}
