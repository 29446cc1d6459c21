//! Forwarding: a call whose `nodes` metadata names nodes is sent to each of them in
//! parallel over node-to-node mTLS, and their answers are merged into one response.
//!
//! The forwarder does not decode messages. It relies on two conventions of the API (see
//! `basalt_api`): a unary response is `repeated <Result> messages = 1`, and every
//! per-node message has `Metadata metadata = 1`. Protobuf concatenation merges repeated
//! fields, and a message field seen twice is merged with later scalars winning, so:
//! - unary answers are merged by concatenating the nodes' responses;
//! - a node's messages are labelled by appending `metadata { node: ... }` to each;
//! - a failed node becomes one message holding only `metadata { node, error, code }`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_api::client::{self, ClientTls, Target};
use basalt_api::common::v1::Metadata;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use futures::FutureExt;
use http::uri::PathAndQuery;
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::authz::ROLES_HEADER;
use crate::Limits;

/// Passes message bytes through untouched: for forwarding, and for clients that send
/// hand-made (or malformed) messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `metadata = 1` holding `node` (and an error, for a failed node), encoded as a field.
fn metadata_field(node: &str, error: Option<&Status>) -> Vec<u8> {
    let metadata = Metadata {
        node: node.to_string(),
        error: error.map(|s| s.message().to_string()).unwrap_or_default(),
        code: error.map(|s| s.code() as i32).unwrap_or_default(),
    };
    let mut out = Vec::with_capacity(metadata.encoded_len() + 4);
    prost::encoding::message::encode(1, &metadata, &mut out);
    out
}

/// Appends `field` to `message` as field 1 (length-delimited) of `out`.
fn put_item(out: &mut BytesMut, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    encode_key(1, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    for part in parts {
        out.put_slice(part);
    }
}

/// Labels every item (field 1) of a unary response with `node`. Other fields are
/// dropped: by convention a unary response has none. The bytes come from another node,
/// so they are outside input (public for the fuzz target).
pub fn label_items(response: &[u8], node: &str, out: &mut BytesMut) -> Result<(), Status> {
    let label = metadata_field(node, None);
    let bad = |e: &dyn std::fmt::Display| malformed(node, e);
    let mut buf = response;
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| bad(&e))?;
        match wire {
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).map_err(|e| bad(&e))?)
                    .ok()
                    .filter(|l| *l <= buf.remaining())
                    .ok_or_else(|| bad(&"a length past the end"))?;
                let (item, rest) = buf.split_at(len);
                if tag == 1 {
                    check_fields(item).map_err(|e| bad(&e))?;
                    put_item(out, &[item, &label]);
                }
                buf = rest;
            }
            other => {
                prost::encoding::skip_field(other, tag, &mut buf, Default::default())
                    .map_err(|e| bad(&e))?;
            }
        }
    }
    Ok(())
}

/// The one error for a node that was not reached, or whose connection was lost on the
/// way, however that happened (refused, silent, another protocol or CA, no such name, a
/// reset): which of these it was stays in this node's log, not in an answer (the API is
/// no port scanner), and a caller must not take it that the call was not done.
fn unreachable(node: &str, reason: &dyn std::fmt::Display) -> Status {
    tracing::info!(node, %reason, "a forwarded call did not reach its node, or lost it");
    Status::unavailable(format!(
        "node {node} is unreachable, or the connection to it was lost"
    ))
}

/// A forwarded call's error: the node's own answer as it is, or, for an error of this
/// side's transport (which carries its cause), [`unreachable`].
fn remote(node: &str, status: Status) -> Status {
    match std::error::Error::source(&status) {
        Some(cause) => unreachable(node, &cause),
        None => status,
    }
}

fn malformed(node: &str, e: &dyn std::fmt::Display) -> Status {
    Status::internal(format!("node {node} sent a malformed response: {e}"))
}

/// Room kept in a merged answer for each node's error item (its node name and message).
const ERROR_ITEM_ROOM: usize = 512;

/// Labels and concatenates the nodes' answers into one response of at most `max` bytes:
/// the merged answer is one message under the same limit as any other, so a node whose
/// answer does not fit becomes that node's error rather than failing the whole call.
fn merge<'a>(
    answers: impl ExactSizeIterator<Item = (&'a String, Result<Bytes, Status>)>,
    max: usize,
) -> Bytes {
    let budget = max.saturating_sub(answers.len() * ERROR_ITEM_ROOM);
    let mut out = BytesMut::new();
    for (node, answer) in answers {
        let labelled = answer.and_then(|bytes| {
            let mut items = BytesMut::new();
            label_items(&bytes, node, &mut items)?;
            if out.len() + items.len() > budget {
                return Err(Status::resource_exhausted(format!(
                    "node {node}: its answer ({} bytes) does not fit in the merged answer \
                     (at most {max} bytes in all); ask this node on its own",
                    items.len()
                )));
            }
            Ok(items)
        });
        match labelled {
            Ok(items) => out.extend_from_slice(&items),
            Err(status) => {
                tracing::info!(node, error = %status.message(), "forwarded call failed");
                put_item(&mut out, &[&metadata_field(node, Some(&status))]);
            }
        }
    }
    out.freeze()
}

/// Walks `message` field by field, without decoding the values. A message another node
/// sent is checked before a label is appended to it: a truncated last field would swallow
/// the label (and could leave a node label of the sender's choosing).
fn check_fields(mut message: &[u8]) -> Result<(), prost::DecodeError> {
    while message.has_remaining() {
        let (tag, wire) = decode_key(&mut message)?;
        prost::encoding::skip_field(wire, tag, &mut message, Default::default())?;
    }
    Ok(())
}

/// Connections to other nodes kept at most; node names come from clients, so the cache
/// must not grow with whatever they send.
const MAX_CHANNELS: usize = 256;

/// Sends calls to other nodes.
pub(crate) struct Forwarder {
    tls: ClientTls,
    default_port: u16,
    /// See [`Limits::forward_timeout`].
    reach_timeout: Duration,
    call_timeout: Duration,
    max_message_bytes: usize,
    channels: Mutex<HashMap<String, Channel>>,
}

/// What a forwarded call carries besides its message.
pub(crate) struct Call {
    pub path: PathAndQuery,
    pub metadata: MetadataMap,
    pub roles: String,
    pub message: Bytes,
}

impl Forwarder {
    pub fn new(tls: ClientTls, default_port: u16, limits: &Limits) -> Self {
        Forwarder {
            tls,
            default_port,
            reach_timeout: limits.forward_timeout,
            call_timeout: limits.unary_timeout,
            max_message_bytes: limits.max_message_bytes,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, node: &str) -> Result<tonic::client::Grpc<Channel>, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(node) {
            Some(c) => c.clone(),
            None => {
                let target = Target::parse(node, self.default_port)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let channel = client::channel(&target, &self.tls, self.reach_timeout)
                    .map_err(|e| Status::internal(e.to_string()))?;
                if channels.len() >= MAX_CHANNELS {
                    // Any one: a dropped channel is simply made again when next needed.
                    if let Some(old) = channels.keys().next().cloned() {
                        channels.remove(&old);
                    }
                }
                channels.insert(node.to_string(), channel.clone());
                channel
            }
        };
        Ok(tonic::client::Grpc::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    fn request(&self, call: &Call, timeout: Option<Duration>) -> Request<Bytes> {
        let mut request = Request::new(call.message.clone());
        let metadata = request.metadata_mut();
        for entry in call.metadata.iter() {
            if let KeyAndValueRef::Ascii(key, value) = entry {
                let skip = [basalt_api::NODES_HEADER, ROLES_HEADER, "grpc-timeout"];
                if !skip.contains(&key.as_str()) {
                    metadata.insert(key.clone(), value.clone());
                }
            }
        }
        if let Ok(roles) = call.roles.parse() {
            metadata.insert(ROLES_HEADER, roles);
        }
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        request
    }

    async fn unary_one(&self, node: &str, call: &Call) -> Result<Bytes, Status> {
        let mut client = self.client(node).map_err(|s| unreachable(node, &s))?;
        let request = self.request(call, Some(self.call_timeout));
        // The channel's connect timeout bounds reaching the node; this, its answer.
        let work = async {
            client.ready().await.map_err(|e| unreachable(node, &e))?;
            let answer = client.unary(request, call.path.clone(), RawCodec).await;
            answer
                .map(Response::into_inner)
                .map_err(|s| remote(node, s))
        };
        match tokio::time::timeout(self.call_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "node {node} did not answer within {:?}",
                self.call_timeout
            ))),
        }
    }

    /// A unary call to every node; one merged response.
    pub async fn unary(&self, nodes: &[String], call: Call) -> Bytes {
        let answers =
            futures::future::join_all(nodes.iter().map(|node| self.unary_one(node, &call))).await;
        merge(nodes.iter().zip(answers), self.max_message_bytes)
    }

    async fn stream_one(
        self: Arc<Self>,
        node: String,
        call: Arc<Call>,
    ) -> BoxStream<'static, Result<Bytes, Status>> {
        let failed = |node: &str, status: Status| -> BoxStream<'static, Result<Bytes, Status>> {
            tracing::info!(node, error = %status.message(), "forwarded stream failed");
            stream::iter([Ok(Bytes::from(metadata_field(node, Some(&status))))]).boxed()
        };
        let mut client = match self.client(&node) {
            Ok(c) => c,
            Err(status) => return failed(&node, unreachable(&node, &status)),
        };
        let request = self.request(&call, None);
        let start = async {
            client.ready().await.map_err(|e| unreachable(&node, &e))?;
            client
                .server_streaming(request, call.path.clone(), RawCodec)
                .await
                .map(Response::into_inner)
                .map_err(|s| remote(&node, s))
        };
        let messages = match tokio::time::timeout(self.reach_timeout, start).await {
            Ok(Ok(messages)) => messages,
            Ok(Err(status)) => return failed(&node, status),
            // A silent port, or a node that does not start its answer in time: either
            // way told apart from a refused one by nothing but the delay.
            Err(_) => {
                let reason = format!("no answer within {:?}", self.reach_timeout);
                return failed(&node, unreachable(&node, &reason));
            }
        };
        let label = Bytes::from(metadata_field(&node, None));
        // A message, or the error that ended the node's stream, then the end.
        stream::unfold(Some(messages), move |messages| {
            let (label, node) = (label.clone(), node.clone());
            async move {
                let mut messages = messages?;
                match messages.message().await {
                    Ok(Some(message)) => {
                        if let Err(e) = check_fields(&message) {
                            let status = malformed(&node, &e);
                            return Some((
                                Ok(Bytes::from(metadata_field(&node, Some(&status)))),
                                None,
                            ));
                        }
                        let mut out = BytesMut::with_capacity(message.len() + label.len());
                        out.extend_from_slice(&message);
                        out.extend_from_slice(&label);
                        Some((Ok(out.freeze()), Some(messages)))
                    }
                    Ok(None) => None,
                    Err(status) => {
                        Some((Ok(Bytes::from(metadata_field(&node, Some(&status)))), None))
                    }
                }
            }
        })
        .boxed()
    }

    /// A streaming call to every node; their messages interleaved as they come.
    pub fn stream(
        self: &Arc<Self>,
        nodes: &[String],
        call: Call,
    ) -> BoxStream<'static, Result<Bytes, Status>> {
        let call = Arc::new(call);
        let streams = nodes
            .iter()
            .map(|node| {
                self.clone()
                    .stream_one(node.clone(), call.clone())
                    .flatten_stream()
            })
            .map(StreamExt::boxed);
        stream::select_all(streams).boxed()
    }
}

#[cfg(test)]
mod tests {
    use basalt_api::machine::v1::{VersionResponse, VersionResult};

    use super::*;

    #[test]
    fn labelling_and_concatenation_merge_node_answers() {
        let answer = |tag: &str, error: &str| VersionResponse {
            messages: vec![VersionResult {
                metadata: Some(Metadata {
                    node: String::new(),
                    error: error.into(),
                    code: 0,
                }),
                tag: tag.into(),
                ..Default::default()
            }],
        };
        let mut out = BytesMut::new();
        label_items(&answer("v1", "").encode_to_vec(), "a", &mut out).unwrap();
        label_items(&answer("v2", "kept").encode_to_vec(), "b", &mut out).unwrap();
        put_item(
            &mut out,
            &[&metadata_field("c", Some(&Status::unavailable("down")))],
        );
        let merged = VersionResponse::decode(out.freeze()).unwrap();
        let got: Vec<_> = merged
            .messages
            .iter()
            .map(|m| {
                let md = m.metadata.clone().unwrap();
                (md.node, md.error, md.code, m.tag.clone())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), "".into(), 0, "v1".into()),
                ("b".into(), "kept".into(), 0, "v2".into()),
                (
                    "c".into(),
                    "down".into(),
                    tonic::Code::Unavailable as i32,
                    "".into()
                ),
            ]
        );
    }

    #[test]
    fn a_node_answer_too_large_to_merge_is_that_nodes_error() {
        let answer = |tag: &str| {
            Bytes::from(
                VersionResponse {
                    messages: vec![VersionResult {
                        tag: tag.into(),
                        ..Default::default()
                    }],
                }
                .encode_to_vec(),
            )
        };
        let nodes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let max = 3 * ERROR_ITEM_ROOM + 3000;
        let answers = vec![
            Ok(answer(&"x".repeat(1000))),
            Ok(answer(&"y".repeat(2500))),
            Ok(answer("small")),
        ];
        let merged = merge(nodes.iter().zip(answers), max);
        assert!(merged.len() <= max, "{} bytes", merged.len());
        let merged = VersionResponse::decode(merged).unwrap();
        let got: Vec<_> = merged
            .messages
            .iter()
            .map(|m| {
                let md = m.metadata.clone().unwrap();
                (md.node, md.code, m.tag.len())
            })
            .collect();
        let exhausted = tonic::Code::ResourceExhausted as i32;
        assert_eq!(
            got,
            [
                ("a".into(), 0, 1000),
                ("b".into(), exhausted, 0),
                ("c".into(), 0, 5)
            ]
        );
    }

    #[test]
    fn malformed_responses_are_errors_not_panics() {
        let mut out = BytesMut::new();
        for bad in [
            &[0x0a, 0xff][..],
            &[0x0a],
            &[0xff, 0xff, 0xff],
            &[0x0a, 0x05, 1],
            // A whole item whose last field is cut short (found by the fuzzer).
            &[0x0a, 0x02, 0xaa, 0xf7],
        ] {
            assert!(label_items(bad, "x", &mut out).is_err(), "{bad:?}");
        }
    }
}
