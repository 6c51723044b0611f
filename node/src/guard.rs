//! What gossip must pass before the loop looks at it: each topic's size limit, and for
//! site messages, decoding and admission (enrolled authors of this site, within their
//! budget, [`crate::site::Site::admit`]).
//!
//! **Goals:** a refusal costs at most one decode and one signature check, and is
//! counted by topic and reason; nothing refused is forwarded.
//!
//! **Non-goals:** what a valid message means (the loop, the intake, the core).

use libp2p::PeerId;
use otamesh_core::site::SiteRefusal;
use otamesh_core::{Millis, TrustRoot, codec};

use crate::site::Site;
use crate::wire::SiteMessage;

/// The largest site message: [`otamesh_core::site::MAX_RELEASES_PER_MESSAGE`] releases,
/// each two bitfields of a bit per chunk (a 64 GiB release of 64 KiB chunks is 128 KiB
/// of bits), and an enrolment.
pub const MAX_SITE_MESSAGE_BYTES: usize = 1 << 20;

/// The largest report (a report, a signature and an enrolment are well under 4 KiB).
pub const MAX_REPORT_BYTES: usize = 64 << 10;

/// The largest directive (an order and a few signatures).
pub const MAX_DIRECTIVE_BYTES: usize = 64 << 10;

/// The largest root of trust (keys and signatures).
pub const MAX_ROOT_BYTES: usize = 256 << 10;

/// A site message: size, canonical decoding, then admission of its author. Returns the
/// author's peer id, device id and the message.
pub fn site_message(
    site: &mut Site,
    now: Millis,
    source: Option<PeerId>,
    data: &[u8],
    trust: &TrustRoot,
) -> Result<(PeerId, otamesh_core::DeviceId, SiteMessage), SiteRefusal> {
    let peer = source.ok_or(SiteRefusal::NoAuthor)?;
    if data.len() > MAX_SITE_MESSAGE_BYTES {
        return Err(SiteRefusal::Malformed);
    }
    let msg: SiteMessage = codec::decode(data).map_err(|_| SiteRefusal::Malformed)?;
    let device = site.admit(now, Some(peer), &msg.enrolment, &msg.class, msg.haves.len(), trust)?;
    Ok((peer, device, msg))
}
