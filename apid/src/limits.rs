//! Per-client limits: calls in flight (streams count until they end) and a token-bucket
//! rate. A client over either limit gets RESOURCE_EXHAUSTED at once, so one client
//! cannot starve the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

/// The server's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request or response message.
    pub max_message_bytes: usize,
    /// Calls one client may have in flight, streams included.
    pub max_calls_per_client: usize,
    /// Calls per second one client may start, sustained...
    pub calls_per_second: f64,
    /// ...and in a burst.
    pub burst: f64,
    /// HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Unary calls that take longer fail with DEADLINE_EXCEEDED (a shorter client
    /// deadline wins).
    pub unary_timeout: Duration,
    /// How long a forwarded call waits to reach each node (connection and handshake) and,
    /// for a stream, for its first headers: a dead or silent node is reported after this,
    /// the others are not held up. A reached node's unary answer may take up to
    /// `unary_timeout` (a service restart takes seconds).
    pub forward_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 << 20,
            max_calls_per_client: 128,
            calls_per_second: 200.0,
            burst: 400.0,
            max_streams_per_connection: 256,
            unary_timeout: Duration::from_secs(60),
            forward_timeout: Duration::from_secs(5),
        }
    }
}

/// A client: its address and certificate subject, so clients behind one address with
/// different certificates are limited apart.
type ClientKey = (IpAddr, String);

struct Bucket {
    in_flight: Arc<AtomicUsize>,
    tokens: f64,
    refilled: Instant,
}

pub(crate) struct Limiter {
    limits: Limits,
    clients: Mutex<Clients>,
}

#[derive(Default)]
struct Clients {
    buckets: HashMap<ClientKey, Bucket>,
    /// The table is swept at most once a second, so a table full of busy clients is not
    /// scanned on every call.
    next_sweep: Option<Instant>,
}

/// Held while a call is in flight.
#[derive(Debug)]
/// A call's place among its client's calls in flight: `weight` places for a call the
/// node fans out to that many nodes.
pub(crate) struct Permit {
    in_flight: Arc<AtomicUsize>,
    weight: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(self.weight, Ordering::AcqRel);
    }
}

/// Idle clients are forgotten once the table is this big.
const SWEEP_AT: usize = 4096;

impl Limiter {
    pub fn new(limits: Limits) -> Self {
        Limiter {
            limits,
            clients: Mutex::new(Clients::default()),
        }
    }

    /// Admits a call of the client (`ip`, `subject`) that takes `weight` of its places
    /// in flight (the number of nodes it goes to; at least one).
    pub fn admit(&self, ip: IpAddr, subject: &str, weight: usize) -> Result<Permit, Status> {
        let weight = weight.max(1);
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let Clients {
            buckets,
            next_sweep,
        } = &mut *clients;
        if buckets.len() >= SWEEP_AT && next_sweep.is_none_or(|at| now >= at) {
            // A client with nothing in flight whose bucket would be full again by now
            // is indistinguishable from a new one: forget it.
            let (rate, burst) = (self.limits.calls_per_second, self.limits.burst);
            buckets.retain(|_, b| {
                let refilled = b.tokens + now.duration_since(b.refilled).as_secs_f64() * rate;
                b.in_flight.load(Ordering::Acquire) > 0 || refilled < burst
            });
            *next_sweep = Some(now + Duration::from_secs(1));
        }
        let bucket = buckets
            .entry((ip, subject.to_string()))
            .or_insert_with(|| Bucket {
                in_flight: Arc::new(AtomicUsize::new(0)),
                tokens: self.limits.burst,
                refilled: now,
            });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * self.limits.calls_per_second).min(self.limits.burst);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "rate limit: more than {} calls/s (burst {})",
                self.limits.calls_per_second, self.limits.burst
            )));
        }
        let in_flight = bucket.in_flight.fetch_add(weight, Ordering::AcqRel);
        let permit = Permit {
            in_flight: bucket.in_flight.clone(),
            weight,
        };
        if in_flight + weight > self.limits.max_calls_per_client {
            return Err(Status::resource_exhausted(format!(
                "too many calls in flight: at most {} per client (a call to N nodes counts N)",
                self.limits.max_calls_per_client
            )));
        }
        bucket.tokens -= 1.0;
        Ok(permit)
    }
}

/// A response body that holds the call's permit until the body (a stream, perhaps) ends
/// or is dropped because the client went away.
pub(crate) struct Guarded<B> {
    pub inner: B,
    pub permit: Option<Permit>,
    pub stream: Option<OpenStream>,
}

/// Counts a server stream as open until it ends or is dropped.
pub(crate) struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    pub fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        OpenStream(count.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.permit = None;
            this.stream = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(calls: usize, rate: f64, burst: f64) -> Limits {
        Limits {
            max_calls_per_client: calls,
            calls_per_second: rate,
            burst,
            ..Limits::default()
        }
    }

    #[test]
    fn in_flight_calls_are_capped_per_client() {
        let limiter = Limiter::new(limits(2, 1000.0, 1000.0));
        let ip = IpAddr::from([127, 0, 0, 1]);
        let a = limiter.admit(ip, "admin", 1).unwrap();
        let _b = limiter.admit(ip, "admin", 1).unwrap();
        let err = limiter.admit(ip, "admin", 1).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("in flight"), "{}", err.message());
        // Another client is not affected.
        limiter.admit(ip, "reader", 1).unwrap();
        drop(a);
        limiter.admit(ip, "admin", 1).unwrap();
    }

    #[test]
    fn a_call_to_n_nodes_takes_n_places() {
        let limiter = Limiter::new(limits(8, 1000.0, 1000.0));
        let ip = IpAddr::from([127, 0, 0, 1]);
        let fan_out = limiter.admit(ip, "admin", 6).unwrap();
        let err = limiter.admit(ip, "admin", 3).unwrap_err();
        assert!(
            err.message().contains("N nodes counts N"),
            "{}",
            err.message()
        );
        let _two = limiter.admit(ip, "admin", 2).unwrap();
        assert!(limiter.admit(ip, "admin", 1).is_err());
        drop(fan_out);
        limiter.admit(ip, "admin", 6).unwrap();
        assert!(
            limiter.admit(ip, "admin", 9).is_err(),
            "more than the limit at once"
        );
    }

    #[test]
    fn the_rate_is_limited_with_a_burst() {
        let limiter = Limiter::new(limits(1000, 0.001, 3.0));
        let ip = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..3 {
            drop(limiter.admit(ip, "x", 1).unwrap());
        }
        let err = limiter.admit(ip, "x", 1).unwrap_err();
        assert!(err.message().contains("rate limit"), "{}", err.message());
    }

    #[test]
    fn clients_that_went_quiet_are_forgotten() {
        let limiter = Limiter::new(limits(10, 1000.0, 2.0));
        let _held = limiter
            .admit(IpAddr::from([10, 0, 0, 1]), "busy", 1)
            .unwrap();
        // Up to the size that triggers a sweep at the next call.
        for i in 0..SWEEP_AT as u32 - 1 {
            drop(
                limiter
                    .admit(IpAddr::from(i.to_be_bytes()), "x", 1)
                    .unwrap(),
            );
        }
        // Each used one token of two; at 1,000/s they are all full again within 1 ms.
        std::thread::sleep(Duration::from_millis(10));
        drop(
            limiter
                .admit(IpAddr::from([10, 0, 0, 2]), "new", 1)
                .unwrap(),
        );
        let clients = limiter.clients.lock().unwrap();
        // The busy client and the new one are left.
        assert_eq!(clients.buckets.len(), 2, "{}", clients.buckets.len());
    }
}
