//! The node's event log: what happened (config applied, service changed, audit records),
//! kept in a bounded ring for replay and broadcast to `Events` streams.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use basalt_api::machine::v1 as api;
use tokio::sync::broadcast;

const KEEP: usize = 1000;

#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Mutex<Ring>>,
    tx: broadcast::Sender<api::Event>,
}

struct Ring {
    next_id: u64,
    events: VecDeque<api::Event>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventLog")
    }
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            inner: Arc::new(Mutex::new(Ring {
                next_id: 1,
                events: VecDeque::new(),
            })),
            tx: broadcast::channel(KEEP).0,
        }
    }
}

impl EventLog {
    pub fn publish(&self, kind: &str, message: impl Into<String>, fields: &[(&str, String)]) {
        let mut ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = time::OffsetDateTime::now_utc();
        let event = api::Event {
            metadata: None,
            id: ring.next_id,
            time: Some(basalt_resource::proto::Timestamp {
                seconds: now.unix_timestamp(),
                nanos: now.nanosecond() as i32,
            }),
            kind: kind.to_string(),
            message: message.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect(),
        };
        ring.next_id += 1;
        if ring.events.len() == KEEP {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Sent under the lock, so a subscriber's replay and live events neither overlap
        // nor leave a gap.
        let _ = self.tx.send(event);
    }

    /// The last `tail` events (`None`: all kept), and a receiver of those that follow.
    pub fn subscribe(
        &self,
        tail: Option<usize>,
    ) -> (Vec<api::Event>, broadcast::Receiver<api::Event>) {
        let ring = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let skip = tail.map_or(0, |t| ring.events.len().saturating_sub(t));
        let replay = ring.events.iter().skip(skip).cloned().collect();
        (replay, self.tx.subscribe())
    }
}
