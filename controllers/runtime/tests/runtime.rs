#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use basalt_controller_runtime::testing::Harness;
use basalt_controller_runtime::{
    Action, CancellationToken, Controller, ControllerError, Edge, Engine, EngineOptions, Input,
    InputKind, Output, OutputKind, QController, QInput, RegistrationError, Runtime,
};
use basalt_resource::{Kind, Phase, Resource, ResourceKey, ResourceSpec};
use basalt_state::State;
use common::{Num, Stage, A, B, C, D};

fn key<S: ResourceSpec>(id: &str) -> ResourceKey {
    ResourceKey::of::<S>(id)
}

async fn set<S: Num>(state: &State, id: &str, value: i64) {
    match state.get(&key::<S>(id)).await {
        Ok(current) => {
            let mut next = basalt_resource::AnyResource::clone(&current);
            next.spec = Arc::new(S::new(value));
            state.update(next, "").await.unwrap();
        }
        Err(_) => {
            state
                .create(Resource::new(id, S::new(value)).into_any(), "")
                .await
                .unwrap();
        }
    }
}

/// Writes a `B` from `A`, and panics whenever an `A` is negative.
struct Panicky {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl Controller for Panicky {
    fn name(&self) -> &'static str {
        "test.Panicky"
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input::weak::<A>()]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<B>()]
    }
    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        for a in rt.list::<A>().await? {
            assert!(a.spec.value >= 0, "negative input {}", a.spec.value);
            rt.put_spec(a.id(), B::new(a.spec.value)).await?;
        }
        Ok(Action::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_controller_is_restarted_and_the_others_keep_running() {
    let runs = Arc::new(AtomicUsize::new(0));
    let h = Harness::builder()
        .with(Panicky { runs: runs.clone() })
        .unwrap()
        .with(Stage::<C, D>::new("test.CtoD"))
        .unwrap()
        .start();
    set::<A>(h.state(), "x", -1).await;
    // It keeps panicking and being restarted...
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs.load(Ordering::SeqCst) < 4 {
        assert!(
            Instant::now() < deadline,
            "the panicking controller was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...while the other controller works.
    set::<C>(h.state(), "c", 10).await;
    h.assert_resource::<D>("c", |d| d.spec.value == 11).await;
    // Fixed input: the restarted controller recovers.
    set::<A>(h.state(), "x", 5).await;
    h.assert_resource::<B>("x", |b| b.spec.value == 5).await;
    h.stop().await;
}

#[test]
fn conflicting_outputs_are_rejected_at_registration() {
    let mut engine = Engine::new(State::new());
    engine.register(Stage::<A, B>::new("test.One")).unwrap();
    let err = engine.register(Stage::<C, B>::new("test.Two")).unwrap_err();
    assert!(
        matches!(err, RegistrationError::ExclusiveConflict { ref other, .. } if other == "test.One"),
        "{err}"
    );
    let err = engine.register(Stage::<A, C>::new("test.One")).unwrap_err();
    assert!(matches!(err, RegistrationError::DuplicateName(_)), "{err}");

    struct SharedB(&'static str);
    #[async_trait]
    impl Controller for SharedB {
        fn name(&self) -> &'static str {
            self.0
        }
        fn inputs(&self) -> Vec<Input> {
            vec![]
        }
        fn outputs(&self) -> Vec<Output> {
            vec![Output::shared::<C>()]
        }
        async fn reconcile(&mut self, _: &mut Runtime) -> Result<Action, ControllerError> {
            Ok(Action::Done)
        }
    }
    engine.register(SharedB("test.S1")).unwrap();
    engine.register(SharedB("test.S2")).unwrap();
    let err = engine
        .register(Stage::<A, C>::new("test.Three"))
        .unwrap_err();
    assert!(
        matches!(err, RegistrationError::ExclusiveConflict { .. }),
        "{err}"
    );
    let err = engine.register(SharedB("test.S1")).unwrap_err();
    assert!(matches!(err, RegistrationError::DuplicateName(_)), "{err}");

    let edges: Vec<(String, String, Edge)> = engine
        .dependencies()
        .into_iter()
        .map(|d| (d.controller.to_string(), d.kind.to_string(), d.edge))
        .collect();
    let edge =
        |controller: &str, kind: &str, edge: Edge| (controller.to_string(), kind.to_string(), edge);
    for expected in [
        edge(
            "test.One",
            "test/As.test.basalt.dev",
            Edge::Input(InputKind::Weak),
        ),
        edge(
            "test.One",
            "test/Bs.test.basalt.dev",
            Edge::Output(OutputKind::Exclusive),
        ),
        edge(
            "test.S2",
            "test/Cs.test.basalt.dev",
            Edge::Output(OutputKind::Shared),
        ),
    ] {
        assert!(edges.contains(&expected), "{expected:?} not in {edges:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_three_converges_over_10000_resources_and_cleans_up() {
    const N: i64 = 10_000;
    let h = Harness::builder()
        .with(Stage::<A, B>::new("test.AtoB"))
        .unwrap()
        .with(Stage::<B, C>::new("test.BtoC"))
        .unwrap()
        .with(Stage::<C, D>::new("test.CtoD"))
        .unwrap()
        .start()
        .with_timeout(Duration::from_secs(120));
    let started = Instant::now();
    for i in 0..N {
        set::<A>(h.state(), &format!("r{i}"), i).await;
    }
    h.assert_count::<D>(N as usize, |d| {
        d.id().strip_prefix('r').and_then(|i| i.parse::<i64>().ok()) == Some(d.spec.value - 3)
    })
    .await;
    eprintln!("converged in {:?}", started.elapsed());

    // Change one source: the change flows through.
    set::<A>(h.state(), "r7", 100).await;
    h.assert_resource::<D>("r7", |d| d.spec.value == 103).await;

    // Delete every source: every output of every stage goes away.
    for i in 0..N {
        h.state()
            .destroy(&key::<A>(&format!("r{i}")), "")
            .await
            .unwrap();
    }
    h.assert_count::<B>(0, |_| true).await;
    h.assert_count::<C>(0, |_| true).await;
    h.assert_count::<D>(0, |_| true).await;
    eprintln!("converged and cleaned up in {:?}", started.elapsed());
    h.stop().await;
}

/// Counts its runs; copies `A/one` into `B/one`, taking `slow` per run.
struct Counting {
    runs: Arc<AtomicUsize>,
    failures_left: usize,
    slow: Duration,
}

#[async_trait]
impl Controller for Counting {
    fn name(&self) -> &'static str {
        "test.Counting"
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input::weak::<A>().with_id("one")]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<B>()]
    }
    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.slow).await;
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(ControllerError::other("not yet"));
        }
        if let Some(a) = rt.get::<A>("one").await? {
            rt.put_spec("one", B::new(a.spec.value)).await?;
        }
        Ok(Action::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_changes_are_coalesced() {
    let runs = Arc::new(AtomicUsize::new(0));
    let h = Harness::builder()
        .with(Counting {
            runs: runs.clone(),
            failures_left: 0,
            slow: Duration::from_millis(20),
        })
        .unwrap()
        .start();
    for v in 0..2000 {
        set::<A>(h.state(), "one", v).await;
    }
    h.assert_resource::<B>("one", |b| b.spec.value == 1999)
        .await;
    let n = runs.load(Ordering::SeqCst);
    // Each run takes 20 ms, so the burst fits in a few runs, however fast the machine.
    assert!(n <= 50, "2000 changes ran the controller {n} times");
    // Changes to resources the input does not name do not wake it. (First let a run
    // still owed to the burst happen.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = runs.load(Ordering::SeqCst);
    set::<A>(h.state(), "other", 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runs.load(Ordering::SeqCst), before);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_retried_with_backoff() {
    let runs = Arc::new(AtomicUsize::new(0));
    let h = Harness::builder()
        .with(Counting {
            runs: runs.clone(),
            failures_left: 3,
            slow: Duration::ZERO,
        })
        .unwrap()
        .start();
    set::<A>(h.state(), "one", 42).await;
    h.assert_resource::<B>("one", |b| b.spec.value == 42).await;
    assert!(runs.load(Ordering::SeqCst) >= 4);
    h.stop().await;
}

/// Polls an outside value (no input) and republishes it.
struct Poller {
    source: Arc<AtomicI64>,
}

#[async_trait]
impl Controller for Poller {
    fn name(&self) -> &'static str {
        "test.Poller"
    }
    fn inputs(&self) -> Vec<Input> {
        vec![]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<A>()]
    }
    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let v = self.source.load(Ordering::SeqCst);
        if v >= 0 {
            rt.put_spec("polled", A::new(v)).await?;
        }
        Ok(Action::RequeueAfter(Duration::from_millis(10)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_after_polls_and_dropped_outputs_wait_for_finalizers() {
    let source = Arc::new(AtomicI64::new(1));
    let h = Harness::builder()
        .with(Poller {
            source: source.clone(),
        })
        .unwrap()
        .start();
    h.assert_resource::<A>("polled", |a| a.spec.value == 1)
        .await;
    source.store(2, Ordering::SeqCst);
    h.assert_resource::<A>("polled", |a| a.spec.value == 2)
        .await;

    // A consumer holds the output; the controller stops producing it.
    h.state()
        .add_finalizer(&key::<A>("polled"), "consumer")
        .await
        .unwrap();
    source.store(-1, Ordering::SeqCst);
    h.assert_resource::<A>("polled", |a| a.metadata.phase == Phase::TearingDown)
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.assert_resource::<A>("polled", |a| a.metadata.phase == Phase::TearingDown)
        .await;
    // The consumer lets go: the output is destroyed.
    h.state()
        .remove_finalizer(&key::<A>("polled"), "consumer")
        .await
        .unwrap();
    h.assert_no_resource::<A>("polled").await;
    // And it comes back when produced again.
    source.store(3, Ordering::SeqCst);
    h.assert_resource::<A>("polled", |a| {
        a.spec.value == 3 && a.metadata.phase == Phase::Running
    })
    .await;
    h.stop().await;
}

/// Reads what it did not declare.
struct Sneaky;

#[async_trait]
impl Controller for Sneaky {
    fn name(&self) -> &'static str {
        "test.Sneaky"
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input::weak::<A>()]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<B>()]
    }
    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        let read = rt.get::<C>("x").await;
        let write = rt.put_spec("x", D::new(1)).await;
        let verdict = match (read, write) {
            (Err(ControllerError::NotAnInput { .. }), Err(ControllerError::NotAnOutput { .. })) => {
                1
            }
            _ => 0,
        };
        rt.put_spec("verdict", B::new(verdict)).await?;
        Ok(Action::Done)
    }
}

#[tokio::test]
async fn undeclared_reads_and_writes_are_refused() {
    let h = Harness::builder().with(Sneaky).unwrap().start();
    h.assert_resource::<B>("verdict", |b| b.spec.value == 1)
        .await;
    h.stop().await;
}

/// Takes `sleep` per run: to test graceful shutdown.
struct Slow {
    sleep: Duration,
    started: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

#[async_trait]
impl Controller for Slow {
    fn name(&self) -> &'static str {
        "test.Slow"
    }
    fn inputs(&self) -> Vec<Input> {
        vec![]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![]
    }
    async fn reconcile(&mut self, _: &mut Runtime) -> Result<Action, ControllerError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.sleep).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(Action::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_reconciles_finish_within_the_grace_period() {
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let until_started = |n: usize| {
        let started = started.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while started.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "the reconcile never started");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let mut engine = Engine::with_options(
        State::new(),
        EngineOptions {
            shutdown_grace: Duration::from_millis(500),
            ..Default::default()
        },
    );
    engine
        .register(Slow {
            sleep: Duration::from_millis(200),
            started: started.clone(),
            finished: finished.clone(),
        })
        .unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(engine.run(stop.clone()));
    until_started(1).await;
    stop.cancel();
    run.await.unwrap();
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "the running reconcile was cut short"
    );

    // A reconcile that hangs is abandoned after the grace period.
    let mut engine = Engine::with_options(
        State::new(),
        EngineOptions {
            shutdown_grace: Duration::from_millis(200),
            ..Default::default()
        },
    );
    engine
        .register(Slow {
            sleep: Duration::from_secs(3600),
            started: started.clone(),
            finished: finished.clone(),
        })
        .unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(engine.run(stop.clone()));
    until_started(2).await;
    let t = Instant::now();
    stop.cancel();
    run.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// Per-item controller: mirrors each `A` as a `C`, fails on `bad` until it is fixed, and
/// cleans up the `C` of an `A` that is gone.
struct Mirror {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl QController for Mirror {
    fn name(&self) -> &'static str {
        "test.Mirror"
    }
    fn inputs(&self) -> Vec<QInput> {
        vec![
            QInput::primary(Input::weak::<A>()),
            // A `B` named like an `A` re-queues that `A`.
            QInput::mapped(Input::weak::<B>(), |b| vec![key::<A>(&b.metadata.id)]),
        ]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<C>()]
    }
    async fn reconcile(
        &mut self,
        rt: &mut Runtime,
        item: &ResourceKey,
    ) -> Result<Action, ControllerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let out = key::<C>(&item.id);
        match rt.get::<A>(&item.id).await? {
            None => {
                rt.destroy_output(&out).await?;
            }
            Some(a) if a.spec.value < 0 => return Err(ControllerError::other("negative")),
            Some(a) => {
                let bonus = rt.get::<B>(&item.id).await?.map_or(0, |b| b.spec.value);
                rt.put_spec(&item.id, C::new(a.spec.value + bonus)).await?;
            }
        }
        Ok(Action::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcontroller_reconciles_items_independently() {
    let state = State::new();
    set::<A>(&state, "before", 1).await; // exists before the controller starts
    let runs = Arc::new(AtomicUsize::new(0));
    let h = Harness::builder_with(state)
        .with_q(Mirror { runs: runs.clone() })
        .unwrap()
        .start();
    h.assert_resource::<C>("before", |c| c.spec.value == 1)
        .await;
    set::<A>(h.state(), "bad", -1).await;
    set::<A>(h.state(), "good", 5).await;
    h.assert_resource::<C>("good", |c| c.spec.value == 5).await;
    // A mapped input re-queues its item.
    set::<B>(h.state(), "good", 10).await;
    h.assert_resource::<C>("good", |c| c.spec.value == 15).await;
    // The failing item is retried, and succeeds once fixed.
    set::<A>(h.state(), "bad", 7).await;
    h.assert_resource::<C>("bad", |c| c.spec.value == 7).await;
    // Destroying an item's source removes its output.
    h.state().destroy(&key::<A>("good"), "").await.unwrap();
    h.assert_no_resource::<C>("good").await;
    assert!(
        h.state()
            .list(&Kind::new("test", C::TYPE), &Default::default())
            .await
            .unwrap()
            .len()
            == 2
    );
    h.stop().await;
}

/// Consumes `A` as a strong input: holds a finalizer on each running `A` and mirrors it
/// as a `C`; lets go of an `A` that is tearing down.
struct Consumer;

#[async_trait]
impl Controller for Consumer {
    fn name(&self) -> &'static str {
        "test.Consumer"
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input::strong::<A>()]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<C>()]
    }
    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        for a in rt.list::<A>().await? {
            if a.metadata.phase == Phase::TearingDown {
                rt.remove_finalizer(&a.metadata.key()).await?;
            } else {
                rt.add_finalizer(&a.metadata.key()).await?;
                rt.put_spec(a.id(), C::new(a.spec.value)).await?;
            }
        }
        Ok(Action::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_inputs_hold_teardown_until_the_consumer_lets_go() {
    let source = Arc::new(AtomicI64::new(4));
    let h = Harness::builder()
        .with(Poller {
            source: source.clone(),
        })
        .unwrap()
        .with(Consumer)
        .unwrap()
        .start();
    let a = h
        .assert_resource::<A>("polled", |a| {
            a.metadata.finalizers.contains("test.Consumer")
        })
        .await;
    assert_eq!(a.metadata.owner, "test.Poller");
    h.assert_resource::<C>("polled", |c| c.spec.value == 4)
        .await;
    // The producer drops its output; the consumer releases it and drops its own; the
    // producer, woken by its output being free, destroys it.
    source.store(-1, Ordering::SeqCst);
    h.assert_no_resource::<A>("polled").await;
    h.assert_no_resource::<C>("polled").await;
    h.stop().await;
}

/// Counts runs; its only input is destroy-ready `A`s.
struct Reaper {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl Controller for Reaper {
    fn name(&self) -> &'static str {
        "test.Reaper"
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input::destroy_ready::<A>()]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![]
    }
    async fn reconcile(&mut self, _: &mut Runtime) -> Result<Action, ControllerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Action::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_ready_inputs_wake_only_when_a_resource_can_be_destroyed() {
    let runs = Arc::new(AtomicUsize::new(0));
    let h = Harness::builder()
        .with(Reaper { runs: runs.clone() })
        .unwrap()
        .start();
    let wait_runs = |n: usize| {
        let runs = runs.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while runs.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "expected {n} runs");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    wait_runs(1).await; // the first run at start
    set::<A>(h.state(), "x", 1).await;
    set::<A>(h.state(), "x", 2).await;
    h.state()
        .add_finalizer(&key::<A>("x"), "holder")
        .await
        .unwrap();
    h.state().teardown(&key::<A>("x"), "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "woken before the resource was ready"
    );
    h.state()
        .remove_finalizer(&key::<A>("x"), "holder")
        .await
        .unwrap();
    wait_runs(2).await;
    h.stop().await;
}

/// Asks for requeues too far away to represent, and holds a finalizer on a weak input.
struct Extreme {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl Controller for Extreme {
    fn name(&self) -> &'static str {
        "test.Extreme"
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input::weak::<A>()]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<B>()]
    }
    async fn reconcile(&mut self, rt: &mut Runtime) -> Result<Action, ControllerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        for a in rt.list::<A>().await? {
            let refused = matches!(
                rt.add_finalizer(&a.metadata.key()).await,
                Err(ControllerError::NotAStrongInput { .. })
            );
            rt.put_spec(a.id(), B::new(i64::from(refused))).await?;
        }
        Ok(Action::RequeueAfter(Duration::MAX))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_requeues_and_finalizers_on_weak_inputs_are_handled() {
    let runs = Arc::new(AtomicUsize::new(0));
    let h = Harness::builder()
        .with(Extreme { runs: runs.clone() })
        .unwrap()
        .start();
    set::<A>(h.state(), "x", 1).await;
    // Still alive after asking for Duration::MAX, and weak inputs take no finalizers.
    h.assert_resource::<B>("x", |b| b.spec.value == 1).await;
    set::<A>(h.state(), "y", 1).await;
    h.assert_resource::<B>("y", |b| b.spec.value == 1).await;
    h.stop().await;
}
