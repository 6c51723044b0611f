//! Storing fetched chunks: checked off the event loop, written and made durable in
//! group commits by one writer thread.
//!
//! **Goals:** a chunk counts as stored only after the flush that makes it durable has
//! returned; batches that arrive while a flush is in progress wait for the next one and
//! share it, so the number of flushes follows the disk's pace, not the number of
//! responses (on a VM disk a flush costs milliseconds, a 32-chunk response
//! about one); a full queue makes senders wait (backpressure), it never drops.
//!
//! **Non-goals:** ordering between batches (each is acknowledged on its own);
//! verification (the caller hands over [`VerifiedChunk`]s only).

use std::thread::JoinHandle;

use otamesh_core::ChunkId;
use otamesh_core::chunking::VerifiedChunk;
use tokio::sync::{mpsc, oneshot};

use crate::store::Store;

/// Batches waiting for the writer at most; senders wait beyond it.
const QUEUE: usize = 64;

/// Bytes one group commit takes at most, so a long queue is flushed in steps and the
/// first batches are acknowledged early.
const GROUP_BYTES: usize = 64 << 20;

/// What became of one batch handed to the writer.
#[derive(Debug)]
pub enum Stored {
    /// Written and flushed: the chunks with their lengths.
    Stored(Vec<(ChunkId, usize)>),
    /// Not stored (disk full, I/O error): the chunks, with why.
    Failed(Vec<(ChunkId, String)>),
}

#[derive(Debug)]
struct Job {
    chunks: Vec<VerifiedChunk>,
    done: oneshot::Sender<Stored>,
}

/// A handle to the chunk writer; cheap to clone. The writer thread ends when every
/// handle is dropped, after the batches already queued.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread for `store`.
    pub fn start(store: Store) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread =
            std::thread::Builder::new().name("chunk-writer".into()).spawn(move || run(&store, rx))?;
        Ok((Self { tx }, thread))
    }

    /// Stores `chunks` durably; returns once they are flushed (or failed).
    pub async fn store(&self, chunks: Vec<VerifiedChunk>) -> Stored {
        let ids =
            |chunks: &[VerifiedChunk], why: &str| chunks.iter().map(|c| (c.id(), why.to_owned())).collect();
        let (done, result) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { chunks, done }).await {
            return Stored::Failed(ids(&job.chunks, "the chunk writer has stopped"));
        }
        result.await.unwrap_or_else(|_| Stored::Failed(Vec::new()))
    }
}

/// The writer: takes every batch queued (up to [`GROUP_BYTES`]), writes them, flushes
/// once, acknowledges each.
fn run(store: &Store, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        let mut bytes: usize = group[0].chunks.iter().map(|c| c.bytes().len()).sum();
        while bytes < GROUP_BYTES {
            let Ok(job) = rx.try_recv() else { break };
            bytes += job.chunks.iter().map(|c| c.bytes().len()).sum::<usize>();
            group.push(job);
        }
        commit(store, group);
    }
}

fn commit(store: &Store, group: Vec<Job>) {
    let mut all = Vec::new();
    let mut batches = Vec::with_capacity(group.len());
    for job in group {
        let lengths: Vec<(ChunkId, usize)> = job.chunks.iter().map(|c| (c.id(), c.bytes().len())).collect();
        all.extend(job.chunks);
        batches.push((lengths, job.done));
    }
    let result = store.put_chunks(&all);
    if let Err(e) = &result {
        tracing::error!(chunks = all.len(), error = %e, "cannot store verified chunks (disk full?)");
    }
    for (lengths, done) in batches {
        let outcome = match &result {
            Ok(_) => Stored::Stored(lengths),
            Err(e) => Stored::Failed(lengths.into_iter().map(|(id, _)| (id, e.to_string())).collect()),
        };
        let _ = done.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u8) -> VerifiedChunk {
        let bytes = vec![i; 1000 + i as usize];
        VerifiedChunk::new(ChunkId::of(&bytes), bytes).unwrap()
    }

    #[test]
    fn batches_queued_together_are_stored_and_each_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let (writer, thread) = Writer::start(store.clone()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let outcomes = rt.block_on(async {
            let jobs = (0..10u8).map(|i| {
                let w = writer.clone();
                async move { w.store(vec![chunk(2 * i), chunk(2 * i + 1)]).await }
            });
            futures::future::join_all(jobs).await
        });
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let Stored::Stored(stored) = outcome else { panic!("batch {i}: {outcome:?}") };
            assert_eq!(stored.len(), 2);
            for (id, len) in stored {
                assert_eq!(store.read_chunk(id).unwrap().bytes().len(), len);
            }
        }
        drop(writer);
        thread.join().unwrap();
    }

    #[test]
    fn a_failed_flush_fails_every_batch_of_its_group_and_stores_nothing_as_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        // The chunk directory cannot be created: a file sits where it should be.
        let c = chunk(7);
        let chunks_dir = dir.path().join("chunks");
        std::fs::remove_dir_all(&chunks_dir).ok();
        std::fs::write(&chunks_dir, b"not a directory").unwrap();
        let (writer, thread) = Writer::start(store).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let outcome = rt.block_on(writer.store(vec![c.clone()]));
        let Stored::Failed(failed) = outcome else { panic!("{outcome:?}") };
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, c.id());
        drop(writer);
        thread.join().unwrap();
    }
}
