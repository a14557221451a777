//! A long-lived engine: one model, a bounded request queue, one worker that answers requests
//! in turn with streaming and prompt-prefix reuse. Any number of threads submit; each request's
//! events go to its own sink. A server builds on this; so can any application.
//!
//! ```no_run
//! use std::sync::mpsc;
//! use gemfilter_models::{Engine, EngineConfig, EngineEvent, Model, Request};
//! use gemfilter_models::burn::tensor::Device;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Model::load("SmolLM2-135M-Instruct.Q4_1.gguf", &Device::default())?;
//! let engine = Engine::start(model, EngineConfig::default());
//! let (sender, events) = mpsc::channel();
//! let ids = engine.model().prompt_ids("…a long document… What is the code?", true)?;
//! engine.submit(ids, Request::gemfilter(1024), move |event| sender.send(event).is_ok())?;
//! for event in events {
//!     match event {
//!         EngineEvent::Delta(delta) => print!("{}", delta.text),
//!         EngineEvent::Done(answer) => { answer?; break }
//!         EngineEvent::Started { .. } => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gemfilter_core::{CancelFlag, CoreError, PrefixCache, PrefixCacheStats, TokenControl};
use thiserror::Error;

use crate::error::ModelError;
use crate::model::{Answer, Model, Request, TextDelta};

/// Queue and reuse settings of an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests waiting at most (beyond the one running); more are refused with
    /// [`SubmitError::QueueFull`].
    pub queue_capacity: usize,
    /// Bytes of prompt-prefix keys/values kept for reuse (0 disables reuse).
    pub prefix_cache_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 16,
            prefix_cache_bytes: 1 << 30,
        }
    }
}

/// What a request's sink receives, in order: `Started`, any number of `Delta`s, one `Done`.
#[derive(Debug)]
pub enum EngineEvent {
    /// The worker took the request after it waited `queued_for`.
    Started {
        /// Time spent in the queue.
        queued_for: Duration,
    },
    /// New answer text.
    Delta(TextDelta),
    /// The answer, or why there is none. Always the last event of an accepted request.
    Done(Result<Answer, ModelError>),
}

/// Why a request was not accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue holds `capacity` waiting requests already: retry later.
    #[error("the request queue is full ({capacity} waiting): retry later")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Counters of an [`Engine`], for `/health` and logs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct EngineStats {
    /// Requests waiting now.
    pub queued: usize,
    /// Requests finished with an answer.
    pub completed: u64,
    /// Requests that ended in an error (cancellations excluded).
    pub failed: u64,
    /// Requests cancelled (the client went away, or its sink refused an event).
    pub cancelled: u64,
    /// Requests refused because the queue was full.
    pub rejected: u64,
    /// The prefix cache.
    pub prefix_cache: PrefixCacheStats,
}

type Sink = Box<dyn FnMut(EngineEvent) -> bool + Send>;

struct Job {
    prompt_ids: Vec<u32>,
    request: Request,
    sink: Sink,
    cancel: CancelFlag,
    submitted: Instant,
}

#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
}

/// One model serving requests one after another on a worker thread (see the
/// [module docs](self)). Dropping the engine lets the queued requests finish, then stops.
pub struct Engine {
    model: Arc<Model>,
    sender: Mutex<Option<SyncSender<Job>>>,
    capacity: usize,
    counters: Arc<Counters>,
    prefix_stats: Arc<Mutex<PrefixCacheStats>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model.info().path)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Engine {
    /// Starts the worker for `model`.
    pub fn start(model: impl Into<Arc<Model>>, config: EngineConfig) -> Self {
        let model = model.into();
        let (sender, receiver) = sync_channel(config.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let prefix_stats = Arc::new(Mutex::new(PrefixCacheStats::default()));
        let worker = {
            let (model, counters, prefix_stats) =
                (model.clone(), counters.clone(), prefix_stats.clone());
            std::thread::Builder::new()
                .name("gemfilter-engine".into())
                .spawn(move || {
                    let mut prefixes = PrefixCache::new(config.prefix_cache_bytes);
                    work(&model, receiver, &mut prefixes, &counters, &prefix_stats)
                })
                .expect("spawn the engine's worker thread")
        };
        Self {
            model,
            sender: Mutex::new(Some(sender)),
            capacity: config.queue_capacity.max(1),
            counters,
            prefix_stats,
            worker: Some(worker),
        }
    }

    /// The served model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Queues a request. `sink` receives its events on the worker thread; returning `false`
    /// (its receiver is gone) cancels the request. Returns the flag that cancels it.
    pub fn submit(
        &self,
        prompt_ids: Vec<u32>,
        mut request: Request,
        sink: impl FnMut(EngineEvent) -> bool + Send + 'static,
    ) -> Result<CancelFlag, SubmitError> {
        let cancel = request.run.cancel.clone().unwrap_or_default();
        request.run.cancel = Some(cancel.clone());
        let job = Job {
            prompt_ids,
            request,
            sink: Box::new(sink),
            cancel: cancel.clone(),
            submitted: Instant::now(),
        };
        let sender = self.sender.lock().expect("engine sender lock");
        let Some(sender) = sender.as_ref() else {
            return Err(SubmitError::ShuttingDown);
        };
        self.counters.queued.fetch_add(1, Ordering::SeqCst);
        match sender.try_send(job) {
            Ok(()) => Ok(cancel),
            Err(TrySendError::Full(_)) => {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(SubmitError::QueueFull {
                    capacity: self.capacity,
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.queued.fetch_sub(1, Ordering::SeqCst);
                Err(SubmitError::ShuttingDown)
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> EngineStats {
        let c = &self.counters;
        EngineStats {
            queued: c.queued.load(Ordering::SeqCst),
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            prefix_cache: *self.prefix_stats.lock().expect("prefix stats lock"),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the queue lets the worker drain what is queued, then return.
        self.sender.lock().expect("engine sender lock").take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The worker: answers jobs in arrival order until the queue closes.
fn work(
    model: &Model,
    jobs: Receiver<Job>,
    prefixes: &mut PrefixCache,
    counters: &Counters,
    prefix_stats: &Mutex<PrefixCacheStats>,
) {
    for mut job in jobs {
        counters.queued.fetch_sub(1, Ordering::SeqCst);
        let outcome = if job.cancel.is_cancelled()
            || !(job.sink)(EngineEvent::Started {
                queued_for: job.submitted.elapsed(),
            }) {
            Err(ModelError::Core(CoreError::Cancelled))
        } else {
            let (sink, cancel) = (&mut job.sink, &job.cancel);
            let mut on_delta = |delta: &TextDelta| {
                if sink(EngineEvent::Delta(delta.clone())) {
                    TokenControl::Continue
                } else {
                    cancel.cancel();
                    TokenControl::Stop
                }
            };
            let answer = model.generate_streaming(
                &job.prompt_ids,
                &job.request,
                Some(prefixes),
                &mut on_delta,
            );
            match answer {
                Ok(_) if job.cancel.is_cancelled() => Err(ModelError::Core(CoreError::Cancelled)),
                other => other,
            }
        };
        match &outcome {
            Ok(_) => counters.completed.fetch_add(1, Ordering::Relaxed),
            Err(ModelError::Core(CoreError::Cancelled)) => {
                counters.cancelled.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
        };
        *prefix_stats.lock().expect("prefix stats lock") = prefixes.stats();
        (job.sink)(EngineEvent::Done(outcome));
    }
}
