//! Property tests of the state: random operation sequences against a model, and
//! concurrent writers, with watchers checking that every event arrives once, in order.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::result_large_err,
    clippy::map_entry
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use basalt_resource::{AnyResource, Kind, Phase, ResourceSpec};
use basalt_state::{Event, State, StateError, Watch, WatchKindOptions};
use common::{counter, key, Counter};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Create(u8, u64),
    Update { id: u8, value: u64, stale: bool },
    Teardown(u8),
    Destroy(u8),
    AddFinalizer(u8, u8),
    RemoveFinalizer(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u8..4;
    prop_oneof![
        (id.clone(), 0u64..3).prop_map(|(i, v)| Op::Create(i, v)),
        (id.clone(), 0u64..3, proptest::bool::weighted(0.2))
            .prop_map(|(id, value, stale)| Op::Update { id, value, stale }),
        id.clone().prop_map(Op::Teardown),
        id.clone().prop_map(Op::Destroy),
        (id.clone(), 0u8..2).prop_map(|(i, f)| Op::AddFinalizer(i, f)),
        (id, 0u8..2).prop_map(|(i, f)| Op::RemoveFinalizer(i, f)),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Model {
    version: u64,
    phase: Phase,
    finalizers: BTreeSet<String>,
    value: u64,
}

fn kind() -> Kind {
    Kind::new(Counter::DEFAULT_NAMESPACE, Counter::TYPE)
}

fn id_of(i: u8) -> String {
    format!("r{i}")
}

/// Applies one op to state and model; checks the state's answer is the model's.
async fn step(state: &State, model: &mut BTreeMap<String, Model>, op: &Op) {
    match op {
        Op::Create(i, v) => {
            let id = id_of(*i);
            let result = state.create(counter(&id, *v).into_any(), "").await;
            if model.contains_key(&id) {
                assert!(
                    matches!(result, Err(StateError::AlreadyExists(_))),
                    "{result:?}"
                );
            } else {
                assert_eq!(result.unwrap().metadata.version, 1);
                model.insert(
                    id,
                    Model {
                        version: 1,
                        phase: Phase::Running,
                        finalizers: BTreeSet::new(),
                        value: *v,
                    },
                );
            }
        }
        Op::Update { id, value, stale } => {
            let id = id_of(*id);
            let Some(m) = model.get_mut(&id) else {
                let mut r = counter(&id, *value).into_any();
                r.metadata.version = 1;
                assert!(matches!(
                    state.update(r, "").await,
                    Err(StateError::NotFound(_))
                ));
                return;
            };
            let mut r = counter(&id, *value).into_any();
            r.metadata.version = if *stale { m.version + 1 } else { m.version };
            let result = state.update(r, "").await;
            if *stale {
                assert!(
                    matches!(result, Err(StateError::Conflict { .. })),
                    "{result:?}"
                );
            } else if m.phase == Phase::TearingDown {
                assert!(
                    matches!(result, Err(StateError::PhaseConflict { .. })),
                    "{result:?}"
                );
            } else {
                if m.value != *value {
                    m.value = *value;
                    m.version += 1;
                }
                assert_eq!(result.unwrap().metadata.version, m.version);
            }
        }
        Op::Teardown(i) => {
            let id = id_of(*i);
            let result = state.teardown(&key(&id), "").await;
            match model.get_mut(&id) {
                None => assert!(matches!(result, Err(StateError::NotFound(_)))),
                Some(m) => {
                    if m.phase == Phase::Running {
                        m.phase = Phase::TearingDown;
                        m.version += 1;
                    }
                    assert_eq!(result.unwrap().metadata.version, m.version);
                }
            }
        }
        Op::Destroy(i) => {
            let id = id_of(*i);
            let result = state.destroy(&key(&id), "").await;
            match model.get(&id) {
                None => assert!(matches!(result, Err(StateError::NotFound(_)))),
                Some(m) if !m.finalizers.is_empty() => {
                    assert!(
                        matches!(result, Err(StateError::PendingFinalizers { .. })),
                        "a resource with finalizers was destroyed: {result:?}"
                    )
                }
                Some(_) => {
                    result.unwrap();
                    model.remove(&id);
                }
            }
        }
        Op::AddFinalizer(i, f) => {
            let id = id_of(*i);
            let fin = format!("f{f}");
            let result = state.add_finalizer(&key(&id), &fin).await;
            match model.get_mut(&id) {
                None => assert!(matches!(result, Err(StateError::NotFound(_)))),
                Some(m) if m.finalizers.contains(&fin) => {
                    assert_eq!(result.unwrap().metadata.version, m.version)
                }
                Some(m) if m.phase == Phase::TearingDown => {
                    assert!(matches!(result, Err(StateError::PhaseConflict { .. })))
                }
                Some(m) => {
                    m.finalizers.insert(fin);
                    m.version += 1;
                    assert_eq!(result.unwrap().metadata.version, m.version);
                }
            }
        }
        Op::RemoveFinalizer(i, f) => {
            let id = id_of(*i);
            let fin = format!("f{f}");
            let result = state.remove_finalizer(&key(&id), &fin).await;
            match model.get_mut(&id) {
                None => assert!(matches!(result, Err(StateError::NotFound(_)))),
                Some(m) => {
                    if m.finalizers.remove(&fin) {
                        m.version += 1;
                    }
                    assert_eq!(result.unwrap().metadata.version, m.version);
                }
            }
        }
    }
}

/// Drains a watch and replays its events, checking each resource's events come in
/// version order with none missing: a lifetime starts with `Created`, each `Updated`
/// goes from version n to n+1, and `Destroyed` carries the last version seen.
/// Returns what the watcher believes the state to be.
fn replay(
    watch: &mut Watch,
    mut seen: BTreeMap<String, Arc<AnyResource>>,
) -> BTreeMap<String, Arc<AnyResource>> {
    while let Some(event) = watch.try_next() {
        match event.unwrap() {
            Event::Bootstrapped => {}
            Event::Created(r) => {
                assert!(!seen.contains_key(&r.metadata.id), "created twice: {r:?}");
                seen.insert(r.metadata.id.clone(), r);
            }
            Event::Updated { old, new } => {
                let prev = seen.get(&new.metadata.id).expect("update before create");
                assert_eq!(
                    old.metadata.version, prev.metadata.version,
                    "missed an event"
                );
                assert_eq!(
                    new.metadata.version,
                    prev.metadata.version + 1,
                    "missed a version"
                );
                seen.insert(new.metadata.id.clone(), new);
            }
            Event::Destroyed(r) => {
                let prev = seen.remove(&r.metadata.id).expect("destroy before create");
                assert_eq!(prev.metadata.version, r.metadata.version, "missed an event");
            }
        }
    }
    seen
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_operations_match_the_model(ops in proptest::collection::vec(op(), 1..80), split in 0usize..80) {
        runtime().block_on(async {
            let state = State::new();
            let mut model = BTreeMap::new();
            let mut from_start = state.watch_kind(&kind(), WatchKindOptions::default()).await.unwrap();
            let mut one = state.watch(&key("r0")).await.unwrap();
            let split = split.min(ops.len());
            for op in &ops[..split] {
                step(&state, &mut model, op).await;
            }
            let mut late = state
                .watch_kind(&kind(), WatchKindOptions { bootstrap: true, ..Default::default() })
                .await
                .unwrap();
            for op in &ops[split..] {
                step(&state, &mut model, op).await;
            }

            // The state is the model.
            let listed = state.list(&kind(), &Default::default()).await.unwrap();
            let actual: BTreeMap<String, Model> = listed
                .iter()
                .map(|r| {
                    (r.metadata.id.clone(), Model {
                        version: r.metadata.version,
                        phase: r.metadata.phase,
                        finalizers: r.metadata.finalizers.clone(),
                        value: r.spec_as::<Counter>().unwrap().value,
                    })
                })
                .collect();
            assert_eq!(actual, model);

            // Every watcher saw every change, in order, and ends where the state is.
            let by_id = |v: &[Arc<AnyResource>]| -> BTreeMap<String, Arc<AnyResource>> {
                v.iter().map(|r| (r.metadata.id.clone(), r.clone())).collect()
            };
            let expected = by_id(&listed);
            assert_eq!(replay(&mut from_start, BTreeMap::new()), expected);
            assert_eq!(replay(&mut late, BTreeMap::new()), expected);
            let r0: BTreeMap<_, _> = expected.into_iter().filter(|(id, _)| id == "r0").collect();
            assert_eq!(replay(&mut one, BTreeMap::new()), r0);
        });
    }

    #[test]
    fn concurrent_writers_lose_no_update(writers in 2usize..6, increments in 1u64..40) {
        runtime().block_on(async {
            let state = State::new();
            state.create(counter("shared", 0).into_any(), "").await.unwrap();
            let mut watch = state.watch(&key("shared")).await.unwrap();
            let mut tasks = Vec::new();
            for _ in 0..writers {
                let state = state.clone();
                tasks.push(tokio::spawn(async move {
                    let mut conflicts = 0u64;
                    for _ in 0..increments {
                        loop {
                            let current = state.get(&key("shared")).await.unwrap();
                            let mut next = AnyResource::clone(&current);
                            let value = current.spec_as::<Counter>().unwrap().value;
                            next.spec = Arc::new(Counter::new(value + 1));
                            match state.update(next, "").await {
                                Ok(_) => break,
                                Err(StateError::Conflict { .. }) => conflicts += 1,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                    conflicts
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let total = writers as u64 * increments;
            let last = state.get(&key("shared")).await.unwrap();
            assert_eq!(last.spec_as::<Counter>().unwrap().value, total);
            assert_eq!(last.metadata.version, total + 1);
            // The watcher saw every version, each value once.
            let mut versions = Vec::new();
            while let Some(e) = watch.try_next() {
                let r = e.unwrap().resource().unwrap().clone();
                assert_eq!(r.spec_as::<Counter>().unwrap().value + 1, r.metadata.version);
                versions.push(r.metadata.version);
            }
            assert_eq!(versions, (1..=total + 1).collect::<Vec<_>>());
        });
    }
}
