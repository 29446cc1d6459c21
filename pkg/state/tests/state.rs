#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::result_large_err,
    clippy::map_entry
)]

mod common;

use std::sync::Arc;

use basalt_resource::{AnyResource, Kind, LabelQuery, Phase, ResourceSpec};
use basalt_state::{Event, State, StateError, WatchKindOptions, WatchLimits};
use common::{counter, key, Counter};

fn kind() -> Kind {
    Kind::new(Counter::DEFAULT_NAMESPACE, Counter::TYPE)
}

#[tokio::test]
async fn create_update_compare_and_swap() {
    let state = State::new();
    let created = state
        .create(counter("a", 1).into_any(), "ctl")
        .await
        .unwrap();
    assert_eq!(created.metadata.version, 1);
    assert_eq!(created.metadata.owner, "ctl");

    let err = state
        .create(counter("a", 1).into_any(), "ctl")
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::AlreadyExists(_)), "{err}");

    let mut next = counter("a", 2).into_any();
    next.metadata.version = 1;
    let updated = state.update(next.clone(), "ctl").await.unwrap();
    assert_eq!(updated.metadata.version, 2);
    assert_eq!(updated.metadata.created, created.metadata.created);

    // The same write again is based on a stale version.
    let err = state.update(next, "ctl").await.unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("test/Counters.test.basalt.dev/a"),
        "{err}"
    );
}

#[tokio::test]
async fn put_creates_or_replaces_whatever_the_version() {
    let state = State::new();
    let first = state.put(counter("p", 1).into_any(), "ctl").await.unwrap();
    assert_eq!(
        (first.metadata.version, first.metadata.owner.as_str()),
        (1, "ctl")
    );
    // A stale (here: zero) version does not matter to put.
    let second = state.put(counter("p", 2).into_any(), "ctl").await.unwrap();
    assert_eq!(second.metadata.version, 2);
    assert_eq!(second.spec_as::<Counter>().unwrap().value, 2);
    let same = state.put(counter("p", 2).into_any(), "ctl").await.unwrap();
    assert_eq!(same.metadata.version, 2, "an unchanged put is not a write");
    // Ownership still holds.
    let err = state
        .put(counter("p", 3).into_any(), "other")
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::OwnerConflict { .. }), "{err}");
}

#[tokio::test]
async fn unchanged_write_does_not_bump_the_version() {
    let state = State::new();
    let created = state
        .create(counter("a", 1).into_any(), "ctl")
        .await
        .unwrap();
    let mut watch = state.watch(&key("a")).await.unwrap();
    assert!(matches!(watch.next().await, Some(Ok(Event::Created(_)))));
    let same = state
        .update(AnyResource::clone(&created), "ctl")
        .await
        .unwrap();
    assert_eq!(same.metadata.version, 1);
    assert!(watch.try_next().is_none(), "a no-op write sent an event");
}

#[tokio::test]
async fn only_the_owner_writes() {
    let state = State::new();
    let created = state
        .create(counter("a", 1).into_any(), "ctl")
        .await
        .unwrap();
    let mut next = AnyResource::clone(&created);
    next.spec = Arc::new(Counter::new(5));
    let err = state.update(next, "intruder").await.unwrap_err();
    assert!(matches!(err, StateError::OwnerConflict { .. }), "{err}");
    assert!(matches!(
        state.teardown(&key("a"), "").await,
        Err(StateError::OwnerConflict { .. })
    ));
    assert!(matches!(
        state.destroy(&key("a"), "other").await,
        Err(StateError::OwnerConflict { .. })
    ));
}

#[tokio::test]
async fn finalizers_block_destroy_and_teardown_blocks_updates() {
    let state = State::new();
    state.create(counter("a", 1).into_any(), "").await.unwrap();
    state.add_finalizer(&key("a"), "consumer").await.unwrap();
    let torn = state.teardown(&key("a"), "").await.unwrap();
    assert_eq!(torn.metadata.phase, Phase::TearingDown);

    let err = state.destroy(&key("a"), "").await.unwrap_err();
    assert!(matches!(err, StateError::PendingFinalizers { .. }), "{err}");
    assert!(err.to_string().contains("consumer"), "{err}");

    let mut next = AnyResource::clone(&torn);
    next.spec = Arc::new(Counter::new(2));
    assert!(matches!(
        state.update(next, "").await,
        Err(StateError::PhaseConflict { .. })
    ));
    assert!(matches!(
        state.add_finalizer(&key("a"), "late").await,
        Err(StateError::PhaseConflict { .. })
    ));

    state.remove_finalizer(&key("a"), "consumer").await.unwrap();
    state.destroy(&key("a"), "").await.unwrap();
    assert!(matches!(
        state.get(&key("a")).await,
        Err(StateError::NotFound(_))
    ));
}

#[tokio::test]
async fn spec_must_match_the_type() {
    let state = State::new();
    let mut wrong = counter("a", 1).into_any();
    wrong.metadata.type_name = "Other.test.basalt.dev".into();
    assert!(matches!(
        state.create(wrong, "").await,
        Err(StateError::KeyMismatch { .. })
    ));
}

#[tokio::test]
async fn list_and_watch_with_label_selectors() {
    let state = State::new();
    state
        .create(counter("a", 1).with_label("tier", "web").into_any(), "")
        .await
        .unwrap();
    state
        .create(counter("b", 1).with_label("tier", "db").into_any(), "")
        .await
        .unwrap();
    let web = LabelQuery::parse("tier=web").unwrap();
    let listed = state.list(&kind(), &web).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].metadata.id, "a");

    let mut watch = state
        .watch_kind(
            &kind(),
            WatchKindOptions {
                bootstrap: true,
                selector: web,
                limits: Default::default(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(watch.next().await, Some(Ok(Event::Created(r))) if r.metadata.id == "a"));
    assert!(matches!(watch.next().await, Some(Ok(Event::Bootstrapped))));

    // b moves into the selection, a moves out of it.
    let b = state.get(&key("b")).await.unwrap();
    let mut moved = AnyResource::clone(&b);
    moved.metadata.labels.insert("tier".into(), "web".into());
    state.update(moved, "").await.unwrap();
    let a = state.get(&key("a")).await.unwrap();
    let mut moved = AnyResource::clone(&a);
    moved.metadata.labels.insert("tier".into(), "db".into());
    state.update(moved, "").await.unwrap();

    assert!(matches!(watch.next().await, Some(Ok(Event::Created(r))) if r.metadata.id == "b"));
    assert!(matches!(watch.next().await, Some(Ok(Event::Destroyed(r))) if r.metadata.id == "a"));
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_told_not_skipped() {
    let (state, _) = State::builder().watch_capacity(4).open().unwrap();
    let mut watch = state
        .watch_kind(&kind(), WatchKindOptions::default())
        .await
        .unwrap();
    for i in 0..10 {
        state
            .create(counter(&format!("r{i}"), i).into_any(), "")
            .await
            .unwrap();
    }
    let mut seen = 0;
    loop {
        match watch.next().await {
            Some(Ok(_)) => seen += 1,
            Some(Err(StateError::Overrun(k))) => {
                assert_eq!(k, kind());
                break;
            }
            other => panic!("expected an overrun, got {other:?}"),
        }
    }
    assert_eq!(seen, 4, "the events that fit are delivered, in order");
    assert!(watch.next().await.is_none());
}

/// A watch bounded in bytes is overrun by what its events hold, not by their number;
/// what the reader takes no longer counts.
#[tokio::test]
async fn a_watch_bounded_in_bytes_is_overrun_by_large_resources() {
    let state = State::new();
    let options = WatchKindOptions {
        limits: WatchLimits {
            events: Some(10_000),
            bytes: Some(64 << 10),
        },
        ..Default::default()
    };
    let mut watch = state.watch_kind(&kind(), options).await.unwrap();
    let small = counter("small", 0).into_any().approx_len();
    let batch = (48 << 10) / small;
    // Three batches of small events, each within the bound, read in between: more than
    // the bound in all, and no overrun.
    for round in 0..3 {
        for i in 0..batch {
            let id = format!("s{round}-{i}");
            state.create(counter(&id, 0).into_any(), "").await.unwrap();
        }
        for _ in 0..batch {
            assert!(matches!(watch.next().await, Some(Ok(Event::Created(_)))));
        }
    }
    // Large ones, 16 KiB each: the fourth does not fit.
    for i in 0..6 {
        let mut large = counter(&format!("l{i}"), 0).into_any();
        large
            .metadata
            .labels
            .insert("pad".into(), "x".repeat(16 << 10));
        state.create(large, "").await.unwrap();
    }
    let mut seen = 0;
    loop {
        match watch.next().await {
            Some(Ok(_)) => seen += 1,
            Some(Err(StateError::Overrun(_))) => break,
            other => panic!("expected an overrun, got {other:?}"),
        }
    }
    assert_eq!(seen, 3, "what fits in 64 KiB is delivered first");
}

#[tokio::test]
async fn watch_one_resource_starts_with_its_state() {
    let state = State::new();
    let mut missing = state.watch(&key("a")).await.unwrap();
    assert!(missing.try_next().is_none());
    state.create(counter("a", 1).into_any(), "").await.unwrap();
    state.create(counter("b", 1).into_any(), "").await.unwrap();
    assert!(matches!(missing.next().await, Some(Ok(Event::Created(r))) if r.metadata.id == "a"));
    assert!(missing.try_next().is_none(), "b is not watched");
}

#[tokio::test]
async fn typed_helpers() {
    let state = State::new();
    state.create(counter("a", 7).into_any(), "").await.unwrap();
    let a = state.get_as::<Counter>("a").await.unwrap();
    assert_eq!(a.spec.value, 7);
    assert_eq!(state.list_as::<Counter>().await.unwrap().len(), 1);
}

#[tokio::test]
async fn keys_are_validated_and_finalizers_are_not_brought_along() {
    let state = State::new();
    for (ns, id) in [("test", ""), ("", "a"), ("te/st", "a"), ("test", "a\0b")] {
        let r = counter(id, 1).in_namespace(ns).into_any();
        let err = state.create(r, "").await.unwrap_err();
        assert!(
            matches!(err, StateError::InvalidKey { .. }),
            "{ns:?}/{id:?}: {err}"
        );
    }
    let long = "x".repeat(2000);
    assert!(state
        .create(counter(&long, 1).into_any(), "")
        .await
        .is_err());
    // Ids may hold '/'.
    state
        .create(counter("inet4/10.0.0.0/8", 1).into_any(), "")
        .await
        .unwrap();

    let mut r = counter("f", 1).into_any();
    r.metadata.finalizers.insert("sneaky".into());
    let created = state.create(r, "").await.unwrap();
    assert!(created.metadata.finalizers.is_empty());
}
