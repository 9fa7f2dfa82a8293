//! RFC 2136 UPDATE in the control plane: the queue listeners fill, the dynamic layer attached
//! to every rebuild, and the values that expire.
//!
//! An update is applied under the rebuild lock and answered only once the snapshot that
//! serves it is published (and saved in the state file): an acknowledged challenge is
//! already visible to the CA and on its way to the secondaries by NOTIFY.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::sync::mpsc;

use super::{Change, Control};
use crate::config::Config;
use crate::diag::Diagnostic;
use crate::server::UpdateRequest;
use crate::update::store::{Challenge, Store};
use crate::update::{self, ZoneView};
use crate::wire::{self, Rcode};
use crate::zone::name::Name;
use crate::zone::serial::serial_gt;
use crate::zone::{Record, ZoneData};

/// How long a peer instance has to answer a forwarded update.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `message` to `peer` over TCP (RFC 7766 framing) and reads its answer's rcode.
async fn forward_to(message: &[u8], peer: SocketAddr) -> Result<Rcode, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(peer).await?;
        let mut framed = (message.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(message);
        stream.write_all(&framed).await?;
        let len = usize::from(stream.read_u16().await?);
        let mut answer = vec![0u8; len];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(FORWARD_TIMEOUT, exchange)
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    if answer.len() < wire::HEADER_LEN {
        return Err("short answer".into());
    }
    Ok(Rcode::from_flags(wire::be16(&answer, 2)))
}

/// Every member's `update-key` names a `[[key]]` of the config.
pub(super) fn check_update_keys(zone: &ZoneData, config: &Config) -> Vec<Diagnostic> {
    zone.members
        .iter()
        .filter_map(|member| {
            let wanted = member.update_key.as_deref()?;
            let known = config.live.keys.iter().any(|key| update::names_key(wanted, key));
            (!known).then(|| {
                Diagnostic::at(
                    member.location.clone(),
                    format!(
                        "member {:?}: update-key {wanted:?} names no [[key]] of the config",
                        member.label()
                    ),
                )
            })
        })
        .collect()
}

/// The challenge TXT records `origin` serves, at its configured TTL.
pub(super) fn records_for(challenges: &Store, origin: &Name, config: &Config) -> Vec<Record> {
    let ttl = config.zone(origin).map_or(0, |z| z.updates.ttl);
    challenges.records(&origin.key(), ttl)
}

/// Gives freshly loaded zones the challenge values that may stay: a value whose member (or
/// key) went away, or whose name the files now own, is dropped.
pub(super) fn attach(zones: &mut [ZoneData], challenges: &mut Store, config: &Config) {
    let dropped = challenges.retain(|zone_key, challenge| {
        zones
            .iter()
            .find(|z| z.origin.key()[..] == *zone_key)
            .is_some_and(|zone| ZoneView::of_data(zone).keeps(challenge))
    });
    for zone in dropped {
        tracing::info!(zone = %Name::from_wire_unchecked(&zone), "challenge values dropped: their member, key or name changed in the files");
    }
    for zone in zones {
        zone.dynamic = records_for(challenges, &zone.origin, config);
    }
}

/// Whether the secondaries serve a serial (`GET /secondaries`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SecondariesReport {
    pub zone: String,
    /// The serial asked about.
    pub serial: u32,
    /// The serial served here now.
    pub served: u32,
    pub all_have_serial: bool,
    pub secondaries: Vec<SecondaryState>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SecondaryState {
    pub address: SocketAddr,
    /// Its SOA serial when last asked (after a NOTIFY); none before the first answer.
    pub serial: Option<u32>,
    pub has_serial: bool,
}

impl Control {
    /// The challenge values `origin` holds now (as last published).
    pub fn challenges_of(&self, origin: &Name) -> Vec<Challenge> {
        crate::sync::lock(&self.challenges_published)
            .zone(&origin.key())
            .to_vec()
    }

    /// Each NOTIFY target of `zone` with the serial it was last seen serving, against
    /// `serial` (default: the one served here). None when the zone is not served.
    pub fn secondaries(&self, zone: &str, serial: Option<u32>) -> Option<SecondariesReport> {
        let origin = Name::parse_origin(zone).ok()?;
        let snapshot = self.shared.snapshot.load();
        let served = snapshot.zones().iter().find(|z| z.origin.key() == origin.key())?;
        let wanted = serial.unwrap_or(served.serial);
        let secondaries: Vec<SecondaryState> = served
            .transfer
            .notify
            .iter()
            .map(|target| {
                let seen = self.notifier.secondary_serial(&origin.key(), target.address);
                SecondaryState {
                    address: target.address,
                    serial: seen,
                    has_serial: seen.is_some_and(|s| !serial_gt(wanted, s)),
                }
            })
            .collect();
        Some(SecondariesReport {
            zone: served.origin.to_string(),
            serial: wanted,
            served: served.serial,
            all_have_serial: secondaries.iter().all(|s| s.has_serial),
            secondaries,
        })
    }

    /// `consortium_dns_secondary_serial`, refreshed at each scrape.
    pub(super) fn refresh_secondary_gauges(&self) {
        self.metrics.secondary_serial.reset();
        for zone in self.shared.snapshot.load().zones() {
            let origin = zone.origin.to_string();
            for target in &zone.transfer.notify {
                if let Some(serial) = self.notifier.secondary_serial(&zone.origin.key(), target.address) {
                    self.metrics
                        .secondary_serial
                        .with_label_values(&[origin.as_str(), &target.address.to_string()])
                        .set(i64::from(serial));
                }
            }
        }
    }

    /// Serves the UPDATEs the listeners queue, one at a time, until the queue closes.
    pub async fn serve_updates(self: Arc<Self>, mut incoming: mpsc::Receiver<UpdateRequest>) {
        while let Some(UpdateRequest {
            message,
            client,
            reply,
            ..
        }) = incoming.recv().await
        {
            let (answer, peers) = self.update(&message, client).await;
            if !peers.is_empty() {
                self.forward(&message, &peers).await;
            }
            reply(answer);
        }
    }

    /// Sends an accepted update on to the zone's other instances (over TCP, still signed by
    /// its sender), so that every instance serves it before the client hears back.
    async fn forward(&self, message: &[u8], peers: &[SocketAddr]) {
        let Some(copy) = update::forward_copy(message) else {
            return;
        };
        let sends = peers.iter().map(|&peer| {
            let copy = copy.clone();
            tokio::spawn(async move { (peer, forward_to(&copy, peer).await) })
        });
        for send in sends.collect::<Vec<_>>() {
            let Ok((peer, outcome)) = send.await else { continue };
            let label = match &outcome {
                Ok(rcode) => rcode.label(),
                Err(_) => "unreachable",
            };
            self.metrics
                .update_forwards
                .with_label_values(&[&peer.to_string(), label])
                .inc();
            match outcome {
                Ok(Rcode::NOERROR) => tracing::debug!(%peer, "update forwarded"),
                Ok(rcode) => tracing::warn!(%peer, %rcode, "a peer instance refused a forwarded update"),
                Err(reason) => tracing::warn!(%peer, "cannot forward an update to a peer instance: {reason}"),
            }
        }
    }

    /// A queue for the listeners; `serve_updates` must then run on its other end.
    pub fn accept_updates(&self) -> Option<mpsc::Receiver<UpdateRequest>> {
        let (sender, incoming) = mpsc::channel(crate::server::UPDATE_QUEUE);
        self.shared.updates.set(sender).ok()?;
        Some(incoming)
    }

    /// Applies one UPDATE and answers it once the result is published.
    /// Applies one UPDATE; returns the answer and the peers to forward it to.
    async fn update(&self, message: &[u8], client: SocketAddr) -> (Vec<u8>, Vec<SocketAddr>) {
        let mut guard = self.rebuilding.lock().await;
        let state = &mut *guard;
        let snapshot = self.shared.snapshot.load_full();
        let config = self.config();
        let policy = |origin: &Name| config.zone(origin).map(|z| z.updates.clone()).unwrap_or_default();
        let before = state.challenges.clone();
        // A bug in `process` must not end the update service: counted, answered SERVFAIL,
        // nothing changed.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            update::process(
                &snapshot,
                &mut state.challenges,
                &mut state.guard,
                &policy,
                message,
                wire::unix_now(),
            )
        }));
        let processed = match outcome {
            Ok(processed) => processed,
            Err(_) => {
                state.challenges = before;
                self.metrics.panics.with_label_values(&["update"]).inc();
                tracing::error!(%client, "processing an UPDATE panicked; answered SERVFAIL (this is a bug: please report it)");
                self.count_update("-", "-", Rcode::SERVFAIL);
                let mut answer = Vec::new();
                wire::error_reply(message, &mut answer, None, Rcode::SERVFAIL, 0, None);
                return (answer, Vec::new());
            }
        };
        let zone = processed.zone.as_deref().unwrap_or("-");
        let key = processed.key.as_deref().unwrap_or("-");
        if let Some(changed) = &processed.changed {
            if let Err(errors) = self.rebuild(state, Change::Dynamic(vec![changed.clone()])).await {
                // Never expected (nothing is read from files); the update is undone.
                tracing::error!(
                    zone,
                    key,
                    ?errors,
                    "publishing an update failed; answered SERVFAIL"
                );
                state.challenges = before;
                self.count_update(zone, key, Rcode::SERVFAIL);
                let mut answer = Vec::new();
                wire::error_reply(message, &mut answer, None, Rcode::SERVFAIL, 0, None);
                return (answer, Vec::new());
            }
        }
        self.count_update(zone, key, processed.rcode);
        for (action, count) in [("added", processed.added), ("removed", processed.removed)] {
            if count > 0 && processed.rcode == Rcode::NOERROR {
                self.metrics
                    .update_values
                    .with_label_values(&[zone, key, action])
                    .inc_by(count as u64);
            }
        }
        // Key material is never logged: the key's name only.
        if processed.rcode == Rcode::NOERROR {
            tracing::info!(client = %client, zone, key, names = ?processed.names, added = processed.added, removed = processed.removed, "update applied");
        } else {
            tracing::warn!(client = %client, zone, key, names = ?processed.names, rcode = %processed.rcode, reason = processed.reason.as_deref().unwrap_or(""), "update refused");
        }
        let peers = match (&processed.zone, processed.rcode) {
            (Some(_), Rcode::NOERROR) if !processed.forwarded => {
                // The list is the same file for every instance: each skips itself.
                let own = &config.restart.listen;
                snapshot
                    .zones()
                    .iter()
                    .find(|z| Some(z.origin.to_string()) == processed.zone)
                    .and_then(|z| config.zone(&z.origin))
                    .map(|z| {
                        z.updates
                            .peers
                            .iter()
                            .filter(|peer| !own.contains(peer))
                            .copied()
                            .collect()
                    })
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        (processed.response, peers)
    }

    fn count_update(&self, zone: &str, key: &str, rcode: Rcode) {
        self.metrics
            .updates
            .with_label_values(&[zone, key, rcode.label()])
            .inc();
    }

    /// Removes the challenge values whose `acme-challenge-lifetime` has passed.
    pub async fn expire_challenges(&self) {
        let mut guard = self.rebuilding.lock().await;
        let state = &mut *guard;
        let before = state.challenges.clone();
        let changed = state.challenges.expire(wire::unix_now());
        if changed.is_empty() {
            return;
        }
        for zone in &changed {
            let zone_text = Name::from_wire_unchecked(zone).to_string();
            for challenge in before.zone(zone) {
                if !state.challenges.zone(zone).contains(challenge) {
                    self.metrics
                        .update_values
                        .with_label_values(&[zone_text.as_str(), &challenge.key, "expired"])
                        .inc();
                }
            }
        }
        match self.rebuild(state, Change::Dynamic(changed)).await {
            Ok(rebuilt) => tracing::info!(serials = ?rebuilt.serials, "expired challenge values removed"),
            Err(errors) => {
                state.challenges = before;
                tracing::error!(?errors, "removing expired challenge values failed");
            }
        }
    }
}
