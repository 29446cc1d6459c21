//! The node's sequences: what it does to come up and to go down, as lists of phases
//! whose tasks run in parallel (a phase starts when the one before it has finished).
//! One sequence runs at a time; Shutdown and Reset may cancel a running one (a node
//! asked to power off while it boots stops booting). Every phase and task is timed in the
//! log, so a slow boot shows where its time went.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The sequences a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// From the kernel to a node that can start: modules, network, STATE, the config.
    Initialize,
    /// The node's own parts: state, controllers, the API, services.
    Boot,
    Reboot,
    Shutdown,
    /// As Shutdown, and the node forgets its config and state.
    Reset,
}

impl Sequence {
    /// Whether this sequence may cancel a running one (that is not itself one of these).
    fn preempts(self) -> bool {
        matches!(self, Sequence::Shutdown | Sequence::Reset)
    }
}

/// A task's error, as the task words it.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;
type TaskFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;

/// One task of a phase.
pub struct Task {
    name: &'static str,
    run: TaskFuture,
}

impl Task {
    pub fn new<E>(
        name: &'static str,
        run: impl Future<Output = Result<(), E>> + Send + 'static,
    ) -> Task
    where
        E: Into<TaskError>,
    {
        Task {
            name,
            run: Box::pin(async move { run.await.map_err(Into::into) }),
        }
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("name", &self.name).finish()
    }
}

/// Tasks that run in parallel; the next phase waits for all of them.
#[derive(Debug)]
pub struct Phase {
    name: &'static str,
    tasks: Vec<Task>,
}

impl Phase {
    pub fn new(name: &'static str, tasks: Vec<Task>) -> Phase {
        Phase { name, tasks }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    #[error("{requested:?} cannot start: {running:?} is running")]
    Busy {
        requested: Sequence,
        running: Sequence,
    },
    #[error("{sequence:?} was cancelled by {by:?} in phase {phase}")]
    Cancelled {
        sequence: Sequence,
        by: Sequence,
        phase: &'static str,
    },
    #[error("{sequence:?}, phase {phase}, task {task}: {source}")]
    Task {
        sequence: Sequence,
        phase: &'static str,
        task: &'static str,
        #[source]
        source: TaskError,
    },
}

/// How long each phase of a finished sequence took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub phases: Vec<(&'static str, Duration)>,
    pub total: Duration,
}

#[derive(Debug)]
struct Running {
    sequence: Sequence,
    cancel: CancellationToken,
    /// Who cancelled it.
    cancelled_by: Arc<Mutex<Option<Sequence>>>,
    /// Becomes true when it has ended.
    ended: watch::Receiver<bool>,
}

/// Runs one sequence at a time.
#[derive(Debug, Default)]
pub struct Sequencer {
    running: Mutex<Option<Running>>,
}

/// Marks the sequence ended when dropped, however it ended (also if its future is dropped).
struct Claim<'a> {
    sequencer: &'a Sequencer,
    ended: watch::Sender<bool>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        *self
            .sequencer
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let _ = self.ended.send(true);
    }
}

impl Sequencer {
    /// The sequence running now, if any.
    pub fn running(&self) -> Option<Sequence> {
        self.lock().as_ref().map(|r| r.sequence)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `phases` as `sequence`: refused while another runs, unless this one may
    /// cancel it (then it waits until that one has stopped).
    pub async fn run(
        &self,
        sequence: Sequence,
        phases: Vec<Phase>,
    ) -> Result<Report, SequenceError> {
        let (cancel, cancelled_by, _claim) = self.claim(sequence).await?;
        let started = Instant::now();
        tracing::info!(?sequence, "sequence started");
        let mut report = Report {
            phases: Vec::new(),
            total: Duration::ZERO,
        };
        for phase in phases {
            let phase_started = Instant::now();
            let name = phase.name;
            tracing::info!(?sequence, phase = name, "phase started");
            let tasks = phase.tasks.into_iter().map(|task| async move {
                let task_started = Instant::now();
                let result = task.run.await;
                let elapsed = task_started.elapsed();
                match &result {
                    Ok(()) => tracing::info!(?sequence, phase = name, task = task.name, ?elapsed, "task done"),
                    Err(e) => tracing::error!(?sequence, phase = name, task = task.name, ?elapsed, error = %e, "task failed"),
                }
                result.map_err(|source| (task.name, source))
            });
            let results = tokio::select! {
                results = futures::future::join_all(tasks) => results,
                () = cancel.cancelled() => {
                    let by = cancelled_by
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .unwrap_or(sequence);
                    tracing::warn!(?sequence, ?by, phase = name, "sequence cancelled");
                    return Err(SequenceError::Cancelled { sequence, by, phase: name });
                }
            };
            if let Some((task, source)) = results.into_iter().find_map(Result::err) {
                return Err(SequenceError::Task {
                    sequence,
                    phase: name,
                    task,
                    source,
                });
            }
            let elapsed = phase_started.elapsed();
            tracing::info!(?sequence, phase = name, ?elapsed, "phase done");
            report.phases.push((name, elapsed));
        }
        report.total = started.elapsed();
        tracing::info!(?sequence, elapsed = ?report.total, "sequence done");
        Ok(report)
    }

    async fn claim(
        &self,
        sequence: Sequence,
    ) -> Result<(CancellationToken, Arc<Mutex<Option<Sequence>>>, Claim<'_>), SequenceError> {
        loop {
            let mut ended = {
                let mut running = self.lock();
                match running.as_ref() {
                    None => {
                        let cancel = CancellationToken::new();
                        let cancelled_by = Arc::new(Mutex::new(None));
                        let (sender, receiver) = watch::channel(false);
                        *running = Some(Running {
                            sequence,
                            cancel: cancel.clone(),
                            cancelled_by: cancelled_by.clone(),
                            ended: receiver,
                        });
                        let claim = Claim {
                            sequencer: self,
                            ended: sender,
                        };
                        return Ok((cancel, cancelled_by, claim));
                    }
                    Some(other) if sequence.preempts() && !other.sequence.preempts() => {
                        *other
                            .cancelled_by
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = Some(sequence);
                        other.cancel.cancel();
                        other.ended.clone()
                    }
                    Some(other) => {
                        return Err(SequenceError::Busy {
                            requested: sequence,
                            running: other.sequence,
                        })
                    }
                }
            };
            // An error means the sender is gone: it has ended too.
            let _ = ended.wait_for(|ended| *ended).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(name: &'static str, delay: Duration, log: &Arc<Mutex<Vec<String>>>) -> Task {
        let log = log.clone();
        Task::new(name, async move {
            log.lock().unwrap().push(format!("{name} start"));
            tokio::time::sleep(delay).await;
            log.lock().unwrap().push(format!("{name} end"));
            Ok::<(), TaskError>(())
        })
    }

    #[tokio::test]
    async fn tasks_of_a_phase_run_together_and_phases_one_after_another() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sequencer = Sequencer::default();
        let report = sequencer
            .run(
                Sequence::Boot,
                vec![
                    Phase::new(
                        "one",
                        vec![
                            sleeper("a", Duration::from_millis(200), &log),
                            sleeper("b", Duration::from_millis(100), &log),
                        ],
                    ),
                    Phase::new("two", vec![sleeper("c", Duration::from_millis(100), &log)]),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["a start", "b start", "b end", "a end", "c start", "c end"]
        );
        // b ran while a did (it ended first); c only after both.
        let names: Vec<_> = report.phases.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["one", "two"]);
        assert!(report.phases[0].1 >= Duration::from_millis(200));
        assert!(report.total >= Duration::from_millis(300));
        assert_eq!(sequencer.running(), None);
    }

    #[tokio::test]
    async fn a_failed_task_ends_the_sequence_naming_it() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sequencer = Sequencer::default();
        let failing = Task::new("mount", async {
            Err::<(), _>(std::io::Error::other("no such disk"))
        });
        let err = sequencer
            .run(
                Sequence::Initialize,
                vec![
                    Phase::new("disks", vec![failing]),
                    Phase::new("never", vec![sleeper("n", Duration::ZERO, &log)]),
                ],
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Initialize, phase disks, task mount: no such disk"
        );
        assert!(log.lock().unwrap().is_empty(), "the next phase did not run");
        assert_eq!(sequencer.running(), None);
    }

    #[tokio::test]
    async fn one_at_a_time_and_shutdown_cancels_a_boot() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sequencer = Arc::new(Sequencer::default());
        let boot = tokio::spawn({
            let sequencer = sequencer.clone();
            let log = log.clone();
            async move {
                let phases = vec![Phase::new(
                    "slow",
                    vec![sleeper("slow", Duration::from_secs(60), &log)],
                )];
                sequencer.run(Sequence::Boot, phases).await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sequencer.running(), Some(Sequence::Boot));

        // Another Boot (or a Reboot) is refused while it runs.
        let err = sequencer.run(Sequence::Reboot, vec![]).await.unwrap_err();
        assert!(matches!(
            err,
            SequenceError::Busy {
                requested: Sequence::Reboot,
                running: Sequence::Boot
            }
        ));

        // Shutdown cancels it, waits for it to stop, then runs.
        let report = sequencer
            .run(
                Sequence::Shutdown,
                vec![Phase::new(
                    "down",
                    vec![sleeper("down", Duration::from_millis(10), &log)],
                )],
            )
            .await
            .unwrap();
        assert_eq!(report.phases.len(), 1);
        let err = boot.await.unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "Boot was cancelled by Shutdown in phase slow"
        );
        assert_eq!(
            *log.lock().unwrap(),
            ["slow start", "down start", "down end"]
        );
    }

    #[tokio::test]
    async fn a_shutdown_is_not_cancelled_by_a_reset() {
        let sequencer = Arc::new(Sequencer::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let shutdown = tokio::spawn({
            let sequencer = sequencer.clone();
            let log = log.clone();
            async move {
                let phases = vec![Phase::new(
                    "down",
                    vec![sleeper("down", Duration::from_millis(500), &log)],
                )];
                sequencer.run(Sequence::Shutdown, phases).await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = sequencer.run(Sequence::Reset, vec![]).await.unwrap_err();
        assert!(matches!(err, SequenceError::Busy { .. }), "{err}");
        shutdown.await.unwrap().unwrap();
    }
}
