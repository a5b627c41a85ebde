// The async audit writer: every write to the store goes through it, so the event loop never
// waits on the disk.
//
// record() and the upserts only append to an in-memory queue (a mutex held for a push, never
// for I/O). One dedicated thread, with its own connection, drains the queue in batched
// transactions: whatever arrived since the last commit, up to max_batch items per
// transaction. The connection runs synchronous=FULL, so every commit is fsynced, once per
// batch (group commit). Commits are at least commit_interval apart unless someone awaits
// durable(), a full batch is waiting, or stop() is asked: a rollout recording a trickle of
// events pays one fsync per interval, not one per event (each costs ~0.1 ms of kernel CPU).
//
// durable() is the barrier a caller awaits before it reports a state as final: it completes
// once everything queued before the call is committed, or with the error that prevented it.
// An item SQLite refuses for its content (never retried) is reported to the durable() calls
// whose barrier shares its batch; rejected() and last_error() always record it.
//
// A failed batch (disk full, database locked beyond busy_timeout, read-only file) is rolled
// back and KEPT: it is retried first, with backoff, or at once when someone awaits durable().
// Its error goes to the durable() waiters, last_error() and the log. Nothing is dropped
// silently; the queue is unbounded, and queue_depth() (exported as a metric) shows it grow.
// Items SQLite refuses for what they hold (a constraint such as a node result for an unknown
// rollout) can never succeed: they are logged, counted in rejected() and skipped, and their
// error goes to the next durable() waiters.
//
// Nothing queued is lost at a clean stop: when stop() gives up on a failing store, every item
// still unwritten (sanitized: redacted and truncated) is written to the spill journal beside
// the database (guardia/store/spill_journal.hpp), whose room is reserved when the writer opens
// so a full disk cannot take it. The next writer on the same database replays the journal
// first, before anything recorded after it, exactly once. Only what the journal itself cannot
// take (beyond its reserve on a full disk) is lost, and the log says how many items. Items
// queued but not committed when the process is killed (kill -9, power loss) are lost: at
// most what arrived within one commit interval plus the batch in flight, or everything queued
// since the store started failing.
//
// degraded() tells the layers above that the latest write attempt failed (locked beyond
// busy_timeout, disk full, I/O error, read-only file), so they can stop work that must be
// recorded (and answer 503) until a later batch commits.
//
// Lifetime: stop() (or the destructor) drains the queue, commits and joins the thread, so it
// blocks its caller until then: call it at shutdown, after the loop has stopped producing,
// and before destroying the io_contexts of coroutines awaiting durable() (their completions
// are posted there).
#pragma once

#include "guardia/core/error.hpp"
#include "guardia/store/records.hpp"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace spdlog {
class logger;
}

namespace guardia::store {

using namespace std::chrono_literals;

struct AuditWriterOptions {
    AuditWriterOptions() noexcept {}
    std::size_t max_batch = 1000;  // data items per transaction
    // Least time between two commits while nobody awaits durable(); zero: commit as soon as
    // anything is queued. An item waits at most this long (plus one commit) to be written.
    std::chrono::milliseconds commit_interval = 50ms;
    std::size_t max_detail_bytes = 4096;  // bound on detail / error / reason, after redaction
    std::chrono::milliseconds busy_timeout = 5s;
    std::chrono::milliseconds max_retry_delay = 5s;  // backoff cap after a failed batch
    int stop_attempts = 3;  // failed attempts stop() tolerates before it spills what is left
    // The spill journal; empty: "<db_path>.spill" (none for ":memory:" or a "file:" URI).
    std::string spill_path;
    // Room reserved for the journal when the writer opens (posix_fallocate), so that spilling
    // still works once the disk is full. What does not fit in it is spilled only if the disk
    // still has room. If the reserve cannot be made the writer logs a warning and goes on.
    std::size_t spill_reserve_bytes = std::size_t{1} << 20;
    std::shared_ptr<spdlog::logger> logger;  // null: spdlog's default logger
};

class AuditWriter {
  public:
    // Opens its own connection (creating and migrating the file as Database does). Throws
    // std::runtime_error naming the file. The thread starts with start().
    // Also opens, locks and reserves the spill journal, and queues what a previous writer
    // spilled into it, first (see replayed()). A journal it cannot open (another writer holds
    // it, no permission) or lines it cannot read are logged; neither is a start-up failure. A
    // journal with unreadable lines is renamed "<journal>.bad-<UTC time>" once its readable
    // items are committed.
    explicit AuditWriter(std::string db_path);
    AuditWriter(std::string db_path, AuditWriterOptions options);
    ~AuditWriter();  // stop()
    AuditWriter(const AuditWriter&) = delete;
    AuditWriter& operator=(const AuditWriter&) = delete;

    // Starts the writer thread. Items recorded before are kept and written first.
    void start();
    // Drains the queue, commits and joins the thread; runs the drain on the calling thread if
    // start() never ran. If the store keeps failing, gives up after stop_attempts failed
    // attempts and writes every unwritten item to the spill journal (fsynced), logging how
    // many and where; items the journal cannot take are counted in an error line. Idempotent.
    // After it, record() and the upserts are logged and dropped (a shutdown-ordering bug in
    // the caller).
    void stop();

    // Queue one item; never waits on the disk. Callable from any thread.
    void record(AuditEvent event);
    void upsert_node_result(NodeResult result);
    void upsert_rollout(RolloutRecord rollout);
    // The service's records (see records.hpp). An outbox upsert after the first only updates
    // the delivery state (attempts, next attempt, delivered, gave up, last error).
    void upsert_task(TaskRecord task);
    void upsert_inventory_node(InventoryNodeRecord node);
    void upsert_artifact(ArtifactRecord artifact);
    void upsert_outbox(OutboxRecord delivery);
    void record_idempotency(IdempotencyRecord answer);  // first answer per key wins

    // Each occurrence of these strings in detail / error / reason is written as "***"
    // (defence in depth: callers must not log secrets in the first place). Applies to every
    // item not yet taken by the writer thread. Empty strings are ignored.
    void set_redactions(std::vector<std::string> secrets);

    // Completes on the awaiting coroutine's executor (the completion is posted there) once
    // every item queued before the call is committed and fsynced, or with the error of the
    // attempt that failed (those items stay queued). Never blocks the loop. Not cancellable;
    // bounded by one write attempt (busy_timeout).
    boost::asio::awaitable<Result<void>> durable();

    // Items queued or held by the writer and not yet committed (or rejected). After stop():
    // the items neither committed nor spilled (lost).
    std::size_t queue_depth() const;
    // The error of the latest write attempt, or of an item refused in the latest committed
    // batch; empty once a later batch committed cleanly.
    std::optional<Error> last_error() const;
    // The latest write attempt failed and was rolled back: the store cannot commit right now
    // (its items are kept and retried). False again once a batch commits. An item refused for
    // its content (rejected()) does not make the store degraded: it sets last_error() only.
    bool degraded() const;
    // Items read from the spill journal at construction and queued first.
    std::uint64_t replayed() const;
    // Items written to the spill journal by stop() because the store could not take them.
    std::uint64_t spilled() const;
    // The spill journal's path; empty when this writer has none.
    std::string spill_path() const;
    std::uint64_t committed() const;  // items committed since construction
    std::uint64_t rejected() const;   // items refused by a constraint: logged, never retried

    // Test hook: PRAGMA query_only on the writer's connection from its next attempt on, so
    // tests can make every write fail (SQLITE_READONLY), even as root.
    void set_query_only_for_test(bool on);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace guardia::store
