//! What nodes say to each other: gossip payloads and the chunk exchange protocol.
//!
//! **Goals:** every message has an explicit size limit enforced before allocation; a
//! response echoes the id of its request; malformed bytes are an error value, never a
//! panic. Small typed values go through [`otamesh_core::codec`]; chunk bodies travel as
//! raw bytes after a small header, so a chunk is not copied through the encoder and
//! may be larger than the codec's message cap.
//!
//! **Non-goals:** compatibility with other libp2p applications.
//!
//! Topics (gossipsub):
//! - [`RELEASES_TOPIC`]: [`otamesh_core::SignedManifest`] in its canonical encoding.
//! - [`site_topic`]: [`SiteMessage`], one per site: membership and have-bitfields.
//!
//! The chunk protocol ([`CHUNK_PROTOCOL`]) is request-response: one stream per request,
//! many requests in flight per peer (pipelining), and each request may name up to
//! [`MAX_BATCH`] chunks, so per-stream costs are paid once per batch. A request is one
//! frame `u32 length | header`; a response is the header frame followed by one body
//! frame per item (big-endian lengths).

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use otamesh_core::{ChunkId, Millis, ReleaseId, codec};
use serde::{Deserialize, Serialize};

/// The gossipsub topic of release manifests, shared by every site.
pub const RELEASES_TOPIC: &str = "otamesh/releases/1";

/// The gossip topic of signed device status reports ([`otamesh_core::report::SignedReport`]).
pub const REPORTS_TOPIC: &str = "otamesh/reports/1";

/// The gossip topic of signed directives ([`otamesh_core::directive::SignedDirective`]).
pub const DIRECTIVES_TOPIC: &str = "otamesh/directives/1";

/// Gossip topic of signed roots of trust (`otamesh_core::root::SignedRoot`), each passed
/// on by a node only after it adopted it.
pub const ROOTS_TOPIC: &str = "otamesh/roots/1";

/// The chunk exchange protocol.
pub const CHUNK_PROTOCOL: StreamProtocol = StreamProtocol::new("/otamesh/chunk/1");

/// The largest header of a request or response.
pub const MAX_HEADER_BYTES: usize = 4096;

/// The most chunks one request may name.
pub const MAX_BATCH: usize = 32;

/// The largest body of one item: a chunk of the chunker's maximum size (16 MiB) or a
/// manifest (the codec's 8 MiB cap).
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// The largest response, all items together.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The gossipsub topic of one site.
pub fn site_topic(site: &str) -> String {
    format!("{SITE_TOPIC_PREFIX}{site}/1")
}

/// What every site topic's name starts with.
pub const SITE_TOPIC_PREFIX: &str = "otamesh/site/";

/// What a node tells its site, every heartbeat and whenever it gains chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteMessage {
    /// The sender's clock when sent; makes each message distinct (gossipsub drops
    /// duplicates by content).
    pub sent_at: Millis,
    /// The sender's device class.
    pub class: String,
    /// One entry per release the sender fetches or holds. An entry makes the sender a
    /// live member for that release's WAN ownership. At most
    /// [`otamesh_core::site::MAX_RELEASES_PER_MESSAGE`]: a longer list is refused at its
    /// length prefix.
    #[serde(deserialize_with = "bounded_haves")]
    pub haves: Vec<Have>,
    /// The sender's install-slot claim (for the per-site install limit), if any.
    pub slot: Option<otamesh_core::site::SlotClaim>,
    /// The sender's enrolment: a site message counts only from an enrolled member of
    /// the site ([`otamesh_core::site::judge`]).
    pub enrolment: otamesh_core::enrolment::SignedEnrolment,
}

fn bounded_haves<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Have>, D::Error> {
    codec::bounded::<D, Have, { otamesh_core::site::MAX_RELEASES_PER_MESSAGE }>(d)
}

/// Which chunks of a release the sender holds, and which it is fetching from the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Have {
    /// The release.
    pub release: ReleaseId,
    /// Bit `i` of byte `i / 8` (least significant first) is manifest chunk `i`.
    pub bits: Vec<u8>,
    /// The chunks the sender is downloading from the origin now, in the same layout
    /// (empty for none): other members leave them to it. A claim, not a fact: the
    /// planner honours a few per peer, for a bounded time.
    pub fetching: Vec<u8>,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Want {
    /// Chunks by id (1 to [`MAX_BATCH`]); the response has one item per chunk, in order.
    Chunks(Vec<ChunkId>),
    /// A release's signed manifest (for a node that heard of the release only through
    /// a peer's have-bitfield).
    Manifest(ReleaseId),
}

/// A request on [`CHUNK_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the requester; the response echoes it.
    pub id: u64,
    /// What is asked for.
    pub want: Want,
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// The body is what was asked for (not yet verified by the receiver).
    Found,
    /// The responder does not have it.
    NotFound,
    /// The responder could not read it (disk error); ask elsewhere.
    Failed,
}

/// A response on [`CHUNK_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// One per chunk asked for (or one for a manifest), in the request's order.
    pub items: Vec<Item>,
}

/// One answered chunk or manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The outcome.
    pub status: Status,
    /// The chunk or manifest bytes when [`Status::Found`]; empty otherwise.
    pub body: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ResponseHeader {
    id: u64,
    statuses: Vec<Status>,
}

/// The request-response codec of [`CHUNK_PROTOCOL`], with the size limits above.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkCodec;

impl libp2p::request_response::Codec for ChunkCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let header = read_frame(io, MAX_HEADER_BYTES).await?;
        let request: Request = codec::decode(&header).map_err(invalid)?;
        if let Want::Chunks(chunks) = &request.want
            && (chunks.is_empty() || chunks.len() > MAX_BATCH)
        {
            return Err(invalid(format!(
                "a request names {} chunks (1 to {MAX_BATCH} allowed)",
                chunks.len()
            )));
        }
        Ok(request)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let header: ResponseHeader =
            codec::decode(&read_frame(io, MAX_HEADER_BYTES).await?).map_err(invalid)?;
        if header.statuses.len() > MAX_BATCH {
            return Err(invalid(format!(
                "a response has {} items (at most {MAX_BATCH})",
                header.statuses.len()
            )));
        }
        let mut items = Vec::with_capacity(header.statuses.len());
        let mut total = 0usize;
        for status in header.statuses {
            let body = read_frame(io, MAX_BODY_BYTES.min(MAX_RESPONSE_BYTES - total)).await?;
            total += body.len();
            items.push(Item { status, body });
        }
        Ok(Response { id: header.id, items })
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Request) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &codec::encode(&req)).await?;
        io.close().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Response) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let statuses = res.items.iter().map(|i| i.status).collect();
        write_frame(io, &codec::encode(&ResponseHeader { id: res.id, statuses })).await?;
        for item in &res.items {
            write_frame(io, &item.body).await?;
        }
        io.close().await
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Reads one length-prefixed frame, refusing lengths over `max` before allocating.
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(invalid(format!("frame of {len} bytes exceeds the {max}-byte limit")));
    }
    // Read into a buffer of exactly the frame's size: `read_to_end` would grow a full
    // buffer (a copy of the whole chunk) just to learn that the frame ended.
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one length-prefixed frame.
pub async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid("frame longer than 4 GiB"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use libp2p::request_response::Codec;

    fn round_trip_response(res: Response) -> io::Result<Response> {
        let mut buf = Vec::new();
        block_on(ChunkCodec.write_response(&CHUNK_PROTOCOL, &mut futures::io::Cursor::new(&mut buf), res))?;
        block_on(ChunkCodec.read_response(&CHUNK_PROTOCOL, &mut futures::io::Cursor::new(buf)))
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let req = Request { id: 7, want: Want::Chunks(vec![ChunkId::of(b"x"), ChunkId::of(b"y")]) };
        let mut buf = Vec::new();
        block_on(ChunkCodec.write_request(
            &CHUNK_PROTOCOL,
            &mut futures::io::Cursor::new(&mut buf),
            req.clone(),
        ))
        .unwrap();
        let back =
            block_on(ChunkCodec.read_request(&CHUNK_PROTOCOL, &mut futures::io::Cursor::new(buf))).unwrap();
        assert_eq!(back, req);
        let res = Response {
            id: 7,
            items: vec![
                Item { status: Status::Found, body: vec![1; 300_000] },
                Item { status: Status::NotFound, body: Vec::new() },
            ],
        };
        assert_eq!(round_trip_response(res.clone()).unwrap(), res);
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        // A length prefix of 4 GiB - 1: refused before allocating.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0, 0];
        let r = block_on(ChunkCodec.read_request(&CHUNK_PROTOCOL, &mut futures::io::Cursor::new(bytes)));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let r = block_on(
            ChunkCodec.read_request(&CHUNK_PROTOCOL, &mut futures::io::Cursor::new([0, 0, 0, 5, 1])),
        );
        assert!(r.is_err());
        // Garbage header of a valid length.
        let r = block_on(
            ChunkCodec.read_request(&CHUNK_PROTOCOL, &mut futures::io::Cursor::new([0, 0, 0, 1, 0xff])),
        );
        assert!(r.is_err());
    }

    #[test]
    fn batches_over_the_limit_are_refused() {
        for n in [0, MAX_BATCH + 1] {
            let req = Request { id: 1, want: Want::Chunks(vec![ChunkId::of(b"x"); n]) };
            let mut buf = Vec::new();
            block_on(ChunkCodec.write_request(&CHUNK_PROTOCOL, &mut futures::io::Cursor::new(&mut buf), req))
                .unwrap();
            let r = block_on(ChunkCodec.read_request(&CHUNK_PROTOCOL, &mut futures::io::Cursor::new(buf)));
            assert!(r.is_err(), "{n} chunks");
        }
    }

    #[test]
    fn site_messages_round_trip() {
        let m = SiteMessage {
            sent_at: 5,
            class: "gw".into(),
            haves: vec![Have {
                release: ReleaseId::from_bytes([1; 32]),
                bits: vec![0b101],
                fetching: vec![0b010],
            }],
            slot: Some(otamesh_core::site::SlotClaim { since: 4, holding: true }),
            enrolment: crate::testkit::enrol(&crate::testkit::publisher(), "s1"),
        };
        assert_eq!(codec::decode::<SiteMessage>(&codec::encode(&m)).unwrap(), m);
    }
}
