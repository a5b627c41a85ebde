#include "guardia/store/audit_writer.hpp"

#include "detail/audit_chain.hpp"
#include "detail/spill_file.hpp"
#include "detail/sqlite.hpp"
#include "guardia/store/audit_chain.hpp"
#include "guardia/store/database.hpp"
#include "guardia/store/spill_journal.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>
#include <type_traits>
#include <variant>

namespace guardia::store {

using detail::sqlite_error;
using detail::Statement;

namespace {

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// A coroutine awaiting durable(), completed from the writer thread.
class Waiter {
  public:
    virtual ~Waiter() = default;
    virtual void complete(Result<void> result) = 0;
};

template <class Handler>
class WaiterFor final : public Waiter {
  public:
    explicit WaiterFor(Handler handler)
        : handler_(std::move(handler)),
          // Tracked work: the awaiting io_context must not run out of work while we write.
          work_(boost::asio::prefer(boost::asio::get_associated_executor(handler_),
                                    boost::asio::execution::outstanding_work.tracked)) {}

    // Posted, never invoked here: the coroutine resumes on its own executor, not on the
    // writer thread.
    void complete(Result<void> result) override {
        boost::asio::post(work_, [h = std::move(handler_), r = std::move(result)]() mutable {
            std::move(h)(std::move(r));
        });
    }

  private:
    Handler handler_;
    std::decay_t<decltype(boost::asio::prefer(
        std::declval<boost::asio::associated_executor_t<Handler>>(),
        boost::asio::execution::outstanding_work.tracked))>
        work_;
};

using Item = std::variant<AuditEvent, NodeResult, RolloutRecord, TaskRecord, InventoryNodeRecord,
                          ArtifactRecord, OutboxRecord, IdempotencyRecord, std::unique_ptr<Waiter>>;
using Redactions = std::vector<std::string>;

void redact(std::string& text, const Redactions& secrets) {
    for (const auto& secret : secrets) {
        for (auto pos = text.find(secret); pos != std::string::npos;
             pos = text.find(secret, pos + 3))
            text.replace(pos, secret.size(), "***");
    }
}

// Cuts to at most `max` bytes on a UTF-8 character boundary and says so at the end.
void truncate(std::string& text, std::size_t max) {
    if (text.size() <= max) return;
    constexpr std::string_view marker = "...[truncated]";
    std::size_t keep = max > marker.size() ? max - marker.size() : max;
    while (keep > 0 && (static_cast<unsigned char>(text[keep]) & 0xC0) == 0x80) --keep;
    text.resize(keep);
    if (max > marker.size()) text += marker;
}

// SQLite refuses these for what the item holds: retrying cannot help.
bool item_error(int rc) {
    switch (rc & 0xff) {
        case SQLITE_CONSTRAINT:
        case SQLITE_TOOBIG:
        case SQLITE_MISMATCH:
        case SQLITE_RANGE:
            return true;
        default:
            return false;
    }
}

// Names an item for a log line without its free text (which is where secrets would hide).
std::string describe_item(const Item& item) {
    if (const auto* e = std::get_if<AuditEvent>(&item))
        return "audit event " + e->event + " (rollout " + e->rollout_id + ", node " + e->node +
               ", step " + e->step + ")";
    if (const auto* n = std::get_if<NodeResult>(&item))
        return "node result of " + n->node + " in rollout " + n->rollout_id;
    if (const auto* r = std::get_if<RolloutRecord>(&item)) return "rollout " + r->id;
    if (const auto* t = std::get_if<TaskRecord>(&item)) return "task " + t->sr_id;
    if (const auto* i = std::get_if<InventoryNodeRecord>(&item)) return "inventory node " + i->name;
    if (const auto* a = std::get_if<ArtifactRecord>(&item))
        return "artifact " + a->name + " of SR " + a->sr_id;
    if (const auto* o = std::get_if<OutboxRecord>(&item)) return "outbox delivery " + o->id;
    if (std::holds_alternative<IdempotencyRecord>(item)) return "idempotency key";
    return "durable() waiter";
}

// The data items travel to and from the journal as SpillItem (same alternatives, same order).
std::optional<SpillItem> to_spill_item(Item&& item) {
    return std::visit(
        [](auto&& value) -> std::optional<SpillItem> {
            using T = std::decay_t<decltype(value)>;
            if constexpr (std::is_same_v<T, std::unique_ptr<Waiter>>)
                return std::nullopt;
            else
                return SpillItem(std::move(value));
        },
        std::move(item));
}

Item from_spill_item(SpillItem&& item) {
    return std::visit([](auto&& value) -> Item { return Item(std::move(value)); }, std::move(item));
}

// A journal's id: unique per spill, so the store's replay marker can never match a newer one.
std::string new_spill_id() {
    std::random_device random;
    std::string id;
    constexpr char hex[] = "0123456789abcdef";
    for (int i = 0; i < 4; ++i) {
        auto word = random();
        for (int b = 0; b < 8; ++b, word >>= 4) id += hex[word & 0xf];
    }
    return id;
}

// "20261204T213140.123Z": when a journal was kept aside, for its name.
std::string utc_stamp() {
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[96];  // room for any int year: -Wformat-truncation
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() %
        1000;
    std::snprintf(buf, sizeof buf, "%04d%02d%02dT%02d%02d%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(ms));
    return buf;
}

// The meta row recording how far a journal's replay got (see spill_journal.hpp).
constexpr std::string_view replay_marker_key = "spill_replay";

constexpr std::chrono::milliseconds first_retry_delay{50};
constexpr std::chrono::milliseconds stop_retry_delay{100};

}  // namespace

struct AuditWriter::Impl {
    Impl(std::string path, AuditWriterOptions opts)
        : options(std::move(opts)), db(std::move(path), database_options(options)) {
        if (options.max_batch == 0) options.max_batch = 1;
        logger = options.logger ? options.logger : spdlog::default_logger();
        open_spill();
    }

    static DatabaseOptions database_options(const AuditWriterOptions& o) {
        DatabaseOptions d;
        d.busy_timeout = o.busy_timeout;
        d.synchronous_full = true;  // see the header: one fsync per batch
        return d;
    }

    void enqueue(Item item);
    std::optional<Error> stopped_error() const;               // mu held
    std::vector<std::unique_ptr<Waiter>> take_all_waiters();  // mu held
    void run();
    void take(std::vector<Item>& incoming, std::vector<std::unique_ptr<Waiter>>& waiters,
              std::size_t room);
    void sanitize(Item& item, const Redactions& secrets) const;
    struct Outcome {
        Result<void> result;       // the transaction: committed or rolled back
        std::size_t rejected = 0;  // items refused and skipped inside a committed batch
        std::optional<Error> rejection;
    };
    Outcome write(std::vector<Item>& batch);
    int write_item(const Item& item, detail::ChainTail& tail);
    Result<void> prepare_statements();
    // The spill journal (writer thread, or the constructor / a never-started stop()).
    void open_spill();
    std::string spill_path_name;  // set once, in the constructor
    std::uint64_t already_replayed(const std::string& id);
    void finish_replay();
    void reserve_spill();
    void spill_unwritten(std::vector<Item>& batch, const Error& error);

    AuditWriterOptions options;
    Database db;  // used by the writer thread only (or by stop() if never started)
    std::shared_ptr<spdlog::logger> logger;

    // Writer-thread state.
    std::optional<Statement> insert_audit;
    std::optional<Statement> upsert_node;
    std::optional<Statement> upsert_rollout;
    std::optional<Statement> upsert_task;
    std::optional<Statement> upsert_inventory;
    std::optional<Statement> upsert_artifact;
    std::optional<Statement> upsert_outbox;
    std::optional<Statement> insert_idempotency;
    std::atomic<int> query_only_request{-1};  // test hook: -1 none, else 0/1
    std::optional<detail::SpillFile> spill;   // none: this writer cannot spill
    std::size_t spill_used = 0;               // bytes of content in the journal (before NULs)
    bool spill_set_aside = false;             // it has unreadable lines: rename it when replayed
    std::string replay_id;                    // the journal being replayed
    std::uint64_t replay_done = 0;            // its items already in the store
    std::uint64_t replay_left = 0;            // its items at the head of the queue / batch

    // Shared state, guarded by mu.
    mutable std::mutex mu;
    std::condition_variable cv;
    std::deque<Item> queue;
    std::size_t queued_waiters = 0;
    std::size_t depth = 0;  // data items not yet committed or rejected
    bool started = false;
    bool stopping = false;
    bool finished = false;  // the drain loop has returned; nothing will be written any more
    std::optional<Error> last_error;
    bool attempt_failed = false;  // degraded()
    std::uint64_t committed = 0;
    std::uint64_t rejected = 0;
    std::uint64_t replayed = 0;
    std::uint64_t spilled = 0;
    std::shared_ptr<const Redactions> redactions = std::make_shared<const Redactions>();

    std::mutex stop_mu;  // serializes stop() callers
    std::thread thread;
};

void AuditWriter::Impl::enqueue(Item item) {
    const bool is_waiter = std::holds_alternative<std::unique_ptr<Waiter>>(item);
    bool accepted = false;
    bool wake = false;
    std::optional<Error> unwritten;
    {
        std::lock_guard lock(mu);
        if (!finished) {
            queue.push_back(std::move(item));
            if (is_waiter)
                ++queued_waiters;
            else
                ++depth;
            accepted = true;
            wake = is_waiter || queue.size() == 1 ||
                   queue.size() - queued_waiters == options.max_batch;
        } else if (is_waiter) {
            unwritten = stopped_error();
        }
    }
    if (accepted) {
        // Wake the writer only for what it waits for (see run()): the first item after an
        // empty queue, a waiter, a full batch or stop. A wake-up per event would cost the
        // recording thread a futex call and the writer a context switch each time.
        if (wake) cv.notify_one();
        return;
    }
    // Stopped: nothing more will be written. A waiter learns whether everything before it
    // made it; a data item now is the caller's shutdown-ordering bug, reported, not hidden.
    if (is_waiter) {
        auto& w = std::get<std::unique_ptr<Waiter>>(item);
        if (unwritten)
            w->complete(*unwritten);
        else
            w->complete(Result<void>());
        return;
    }
    logger->error("store {}: audit writer already stopped; dropped {}", db.path(),
                  describe_item(item));
}

std::optional<Error> AuditWriter::Impl::stopped_error() const {
    // Spilled items are safe but not in the store: durable() promises the store.
    if (depth == 0 && spilled == 0) return std::nullopt;
    if (last_error) return last_error;
    return Error(errc::cancelled, "store " + db.path() + ": audit writer stopped with " +
                                      std::to_string(depth + spilled) + " items unwritten");
}

std::vector<std::unique_ptr<Waiter>> AuditWriter::Impl::take_all_waiters() {
    std::vector<std::unique_ptr<Waiter>> out;
    for (auto it = queue.begin(); it != queue.end();) {
        if (auto* w = std::get_if<std::unique_ptr<Waiter>>(&*it)) {
            out.push_back(std::move(*w));
            it = queue.erase(it);
        } else {
            ++it;
        }
    }
    queued_waiters = 0;
    return out;
}

void AuditWriter::Impl::take(std::vector<Item>& incoming,
                             std::vector<std::unique_ptr<Waiter>>& waiters, std::size_t room) {
    // Waiters are taken only up to the cut: each one resolves with the batch holding
    // everything queued before it.
    while (!queue.empty()) {
        if (auto* w = std::get_if<std::unique_ptr<Waiter>>(&queue.front())) {
            waiters.push_back(std::move(*w));
            --queued_waiters;
        } else if (room == 0) {
            break;
        } else {
            incoming.push_back(std::move(queue.front()));
            --room;
        }
        queue.pop_front();
    }
}

void AuditWriter::Impl::sanitize(Item& item, const Redactions& secrets) const {
    // Redact before truncating, so a cut can never leave a secret's head behind unredacted.
    auto clean = [&](std::string& text) {
        redact(text, secrets);
        truncate(text, options.max_detail_bytes);
    };
    if (auto* e = std::get_if<AuditEvent>(&item))
        clean(e->detail);
    else if (auto* n = std::get_if<NodeResult>(&item))
        clean(n->error);
    else if (auto* r = std::get_if<RolloutRecord>(&item))
        clean(r->reason);
    else if (auto* t = std::get_if<TaskRecord>(&item))
        clean(t->reason);
    else if (auto* o = std::get_if<OutboxRecord>(&item))
        clean(o->last_error);
}

Result<void> AuditWriter::Impl::prepare_statements() {
    if (insert_audit) return {};
    sqlite3* h = db.native_handle();
    auto a = Statement::prepare(h,
                                "INSERT INTO audit_log (ts_ms, sr_id, rollout_id, node, step,"
                                " event, exit_code, duration_ms, detail, id, prev_hash,"
                                " row_hash, principal) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,"
                                " ?9, ?10, ?11, ?12, ?13)",
                                true);
    if (!a) return a.error();
    auto n = Statement::prepare(h,
                                "INSERT INTO node_results (rollout_id, node, status, step, error,"
                                " started_ms, finished_ms, backup_path)"
                                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                                " ON CONFLICT (rollout_id, node) DO UPDATE SET"
                                " status = excluded.status, step = excluded.step,"
                                " error = excluded.error, started_ms = excluded.started_ms,"
                                " finished_ms = excluded.finished_ms,"
                                " backup_path = excluded.backup_path",
                                true);
    if (!n) return n.error();
    auto r = Statement::prepare(h,
                                "INSERT INTO rollouts (id, sr_id, status, reason, created_ms,"
                                " finished_ms, owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                                " ON CONFLICT (id) DO UPDATE SET sr_id = excluded.sr_id,"
                                " status = excluded.status, reason = excluded.reason,"
                                " created_ms = excluded.created_ms,"
                                " finished_ms = excluded.finished_ms, owner = excluded.owner",
                                true);
    if (!r) return r.error();
    auto t = Statement::prepare(h,
                                "INSERT INTO tasks (sr_id, status, requester, approver, created_ms,"
                                " updated_ms, payload, inst_id, system_name, rollout_id, reason)"
                                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                                " ON CONFLICT (sr_id) DO UPDATE SET status = excluded.status,"
                                " requester = excluded.requester, approver = excluded.approver,"
                                " created_ms = excluded.created_ms,"
                                " updated_ms = excluded.updated_ms, payload = excluded.payload,"
                                " inst_id = excluded.inst_id, system_name = excluded.system_name,"
                                " rollout_id = excluded.rollout_id, reason = excluded.reason",
                                true);
    if (!t) return t.error();
    auto i = Statement::prepare(h,
                                "INSERT INTO inventory_nodes (name, inst_id, system_name, payload)"
                                " VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO UPDATE SET"
                                " inst_id = excluded.inst_id, system_name = excluded.system_name,"
                                " payload = excluded.payload",
                                true);
    if (!i) return i.error();
    auto f =
        Statement::prepare(h,
                           "INSERT INTO artifacts (sr_id, name, path, sha256, size, created_ms)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (sr_id, name) DO"
                           " UPDATE SET path = excluded.path, sha256 = excluded.sha256,"
                           " size = excluded.size, created_ms = excluded.created_ms",
                           true);
    if (!f) return f.error();
    auto o =
        Statement::prepare(h,
                           "INSERT INTO outbox (id, event, sr_id, url, headers, body, attempts,"
                           " next_attempt_ms, created_ms, delivered_ms, gave_up_ms,"
                           " last_error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,"
                           " ?11, ?12) ON CONFLICT (id) DO UPDATE SET"
                           " attempts = excluded.attempts,"
                           " next_attempt_ms = excluded.next_attempt_ms,"
                           " delivered_ms = excluded.delivered_ms,"
                           " gave_up_ms = excluded.gave_up_ms,"
                           " last_error = excluded.last_error",
                           true);
    if (!o) return o.error();
    // A key is written once: the first answer is the one every retry gets.
    auto k = Statement::prepare(h,
                                "INSERT INTO idempotency_keys (key, request, status, body,"
                                " created_ms) VALUES (?1, ?2, ?3, ?4, ?5)"
                                " ON CONFLICT (key) DO NOTHING",
                                true);
    if (!k) return k.error();
    insert_audit = std::move(*a);
    upsert_node = std::move(*n);
    upsert_rollout = std::move(*r);
    upsert_task = std::move(*t);
    upsert_inventory = std::move(*i);
    upsert_artifact = std::move(*f);
    upsert_outbox = std::move(*o);
    insert_idempotency = std::move(*k);
    return {};
}

int AuditWriter::Impl::write_item(const Item& item, detail::ChainTail& tail) {
    Statement* stmt = nullptr;
    // An audit row's id is chosen here, not by SQLite, because the row's hash covers it.
    std::optional<detail::ChainTail> appended;
    if (const auto* e = std::get_if<AuditEvent>(&item)) {
        AuditRow row;
        static_cast<AuditEvent&>(row) = *e;
        row.id = tail.id + 1;
        appended.emplace();
        appended->id = row.id;
        appended->hash = audit_row_hash(row, tail.hash);
        stmt = &*insert_audit;
        stmt->bind(1, e->ts_ms);
        stmt->bind(2, e->sr_id);
        stmt->bind(3, e->rollout_id);
        stmt->bind(4, e->node);
        stmt->bind(5, e->step);
        stmt->bind(6, e->event);
        stmt->bind(7, e->exit_code ? std::optional<std::int64_t>(*e->exit_code) : std::nullopt);
        stmt->bind(8, e->duration_ms);
        stmt->bind(9, e->detail);
        stmt->bind(10, appended->id);
        stmt->bind(11, tail.hash);
        stmt->bind(12, appended->hash);
        stmt->bind(13, e->principal);
    } else if (const auto* n = std::get_if<NodeResult>(&item)) {
        stmt = &*upsert_node;
        stmt->bind(1, n->rollout_id);
        stmt->bind(2, n->node);
        stmt->bind(3, n->status);
        stmt->bind(4, n->step);
        stmt->bind(5, n->error);
        stmt->bind(6, n->started_ms);
        stmt->bind(7, n->finished_ms);
        stmt->bind(8, n->backup_path);
    } else if (const auto* r = std::get_if<RolloutRecord>(&item)) {
        stmt = &*upsert_rollout;
        stmt->bind(1, r->id);
        stmt->bind(2, r->sr_id);
        stmt->bind(3, r->status);
        stmt->bind(4, r->reason);
        stmt->bind(5, r->created_ms);
        stmt->bind(6, r->finished_ms);
        stmt->bind(7, r->owner);
    } else if (const auto* t = std::get_if<TaskRecord>(&item)) {
        stmt = &*upsert_task;
        stmt->bind(1, t->sr_id);
        stmt->bind(2, t->status);
        stmt->bind(3, t->requester);
        stmt->bind(4, t->approver);
        stmt->bind(5, t->created_ms);
        stmt->bind(6, t->updated_ms);
        stmt->bind(7, t->payload);
        stmt->bind(8, t->inst_id);
        stmt->bind(9, t->system_name);
        stmt->bind(10, t->rollout_id);
        stmt->bind(11, t->reason);
    } else if (const auto* i = std::get_if<InventoryNodeRecord>(&item)) {
        stmt = &*upsert_inventory;
        stmt->bind(1, i->name);
        stmt->bind(2, i->inst_id);
        stmt->bind(3, i->system_name);
        stmt->bind(4, i->payload);
    } else if (const auto* f = std::get_if<ArtifactRecord>(&item)) {
        stmt = &*upsert_artifact;
        stmt->bind(1, f->sr_id);
        stmt->bind(2, f->name);
        stmt->bind(3, f->path);
        stmt->bind(4, f->sha256);
        stmt->bind(5, f->size);
        stmt->bind(6, f->created_ms);
    } else if (const auto* o = std::get_if<OutboxRecord>(&item)) {
        stmt = &*upsert_outbox;
        stmt->bind(1, o->id);
        stmt->bind(2, o->event);
        stmt->bind(3, o->sr_id);
        stmt->bind(4, o->url);
        stmt->bind(5, o->headers);
        stmt->bind(6, o->body);
        stmt->bind(7, o->attempts);
        stmt->bind(8, o->next_attempt_ms);
        stmt->bind(9, o->created_ms);
        stmt->bind(10, o->delivered_ms);
        stmt->bind(11, o->gave_up_ms);
        stmt->bind(12, o->last_error);
    } else if (const auto* k = std::get_if<IdempotencyRecord>(&item)) {
        stmt = &*insert_idempotency;
        stmt->bind(1, k->key);
        stmt->bind(2, k->request);
        stmt->bind(3, std::int64_t{k->status});
        stmt->bind(4, k->body);
        stmt->bind(5, k->created_ms);
    } else {
        return SQLITE_DONE;  // waiters never reach a batch
    }
    int rc = stmt->step();
    stmt->reset();
    if (rc == SQLITE_DONE && appended) tail = std::move(*appended);
    return rc;
}

AuditWriter::Impl::Outcome AuditWriter::Impl::write(std::vector<Item>& batch) {
    sqlite3* h = db.native_handle();
    if (int q = query_only_request.exchange(-1); q >= 0)
        (void)db.exec(q != 0 ? "PRAGMA query_only = ON" : "PRAGMA query_only = OFF");
    Outcome out;
    if (batch.empty()) return out;
    if (auto r = prepare_statements(); !r) {
        out.result = r.error();
        return out;
    }
    const std::string what =
        "store " + db.path() + ": writing " + std::to_string(batch.size()) + " queued items";
    auto fail = [&](int rc) {
        Error e = sqlite_error(h, rc, what);
        if (sqlite3_get_autocommit(h) == 0) (void)db.exec("ROLLBACK");
        out.result = std::move(e);
        out.rejected = 0;
        out.rejection.reset();
        return std::move(out);
    };
    // IMMEDIATE: take the write lock now (waiting up to busy_timeout) rather than fail with
    // SQLITE_BUSY halfway through the batch.
    if (int rc = sqlite3_exec(h, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr); rc != SQLITE_OK)
        return fail(rc);
    // The chain's end, read under the write lock: no other connection can append before this
    // transaction commits, so the chain cannot fork. Read at every attempt: a rolled-back
    // batch leaves no trace to continue from.
    auto tail = detail::read_chain_tail(h, db.path());
    if (!tail) {
        (void)db.exec("ROLLBACK");
        out.result = tail.error();
        return out;
    }
    for (const auto& item : batch) {
        int rc = write_item(item, *tail);
        if (rc == SQLITE_DONE) continue;
        if (!item_error(rc)) return fail(rc);
        // Only this statement was undone; the transaction goes on without the item.
        Error e = sqlite_error(h, rc, "store " + db.path() + ": refused " + describe_item(item));
        logger->error("{}; it will not be retried", e.describe());
        ++out.rejected;
        out.rejection = std::move(e);
    }
    if (replay_left > 0) {
        // The batch starts with the journal's next items (they were queued first): record,
        // in the same transaction, how many of them the store holds once it commits, so a
        // crash before the journal is cleared cannot replay them twice.
        const auto in_batch = std::min<std::uint64_t>(replay_left, batch.size());
        auto mark = Statement::prepare(h,
                                       "INSERT INTO meta (key, value) VALUES (?1, ?2)"
                                       " ON CONFLICT (key) DO UPDATE SET value = excluded.value");
        if (!mark) {
            (void)db.exec("ROLLBACK");
            out.result = mark.error();
            return out;
        }
        const std::string value = replay_id + " " + std::to_string(replay_done + in_batch);
        mark->bind(1, replay_marker_key);
        mark->bind(2, value);
        if (int rc = mark->step(); rc != SQLITE_DONE) return fail(rc);
    }
    if (int rc = sqlite3_exec(h, "COMMIT", nullptr, nullptr, nullptr); rc != SQLITE_OK)
        return fail(rc);
    return out;
}

void AuditWriter::Impl::open_spill() {
    std::string path = options.spill_path;
    if (path.empty()) {
        const std::string& db_path = db.path();
        if (db_path.empty() || db_path == ":memory:" || db_path.rfind("file:", 0) == 0) return;
        path = db_path + ".spill";
    }
    auto file = detail::SpillFile::open(path);
    if (!file) {
        logger->warn(
            "{}; this writer cannot spill: items it cannot write when it stops will be "
            "counted in the log and lost",
            file.error().describe());
        return;
    }
    spill = std::move(*file);
    spill_path_name = path;
    auto bytes = spill->read_all();
    if (!bytes) {
        // Unreadable: keep it for an operator, start a fresh one.
        logger->error("{}", bytes.error().describe());
        spill_set_aside = true;
        finish_replay();
        return;
    }
    SpillContents contents = parse_spill(*bytes);
    spill_used = contents.used_bytes;
    for (const auto& p : contents.problems)
        logger->error("spill journal {}: line {}: {}", path, p.line, p.reason);
    spill_set_aside = !contents.problems.empty();
    if (!contents.items.empty()) {
        const std::uint64_t skip =
            std::min<std::uint64_t>(already_replayed(contents.id), contents.items.size());
        if (skip > 0)
            logger->warn(
                "spill journal {}: its first {} item(s) are already in the store (an "
                "earlier replay was interrupted); not replaying them again",
                path, skip);
        const std::size_t n = contents.items.size() - skip;
        if (n > 0) {
            logger->warn("store {}: replaying {} item(s) from {}", db.path(), n, path);
            // Nobody else can see the queue yet: the writer is being constructed.
            for (std::size_t i = skip; i < contents.items.size(); ++i)
                queue.push_back(from_spill_item(std::move(contents.items[i])));
            depth += n;
            replayed = n;
            replay_id = contents.id;
            replay_done = skip;
            replay_left = n;
        }
    }
    if (replay_left == 0 && (!contents.empty || spill_set_aside)) finish_replay();
    reserve_spill();
}

std::uint64_t AuditWriter::Impl::already_replayed(const std::string& id) {
    if (id.empty()) return 0;
    auto q = Statement::prepare(db.native_handle(), "SELECT value FROM meta WHERE key = ?1");
    if (!q) return 0;
    q->bind(1, replay_marker_key);
    if (q->step() != SQLITE_ROW) return 0;
    const std::string value = q->text(0);
    const auto space = value.find(' ');
    if (space == std::string::npos || value.substr(0, space) != id) return 0;
    try {
        return std::stoull(value.substr(space + 1));
    } catch (const std::exception&) {
        return 0;  // not ours to interpret: replay everything rather than skip
    }
}

void AuditWriter::Impl::reserve_spill() {
    if (!spill) return;
    if (auto r = spill->reserve(options.spill_reserve_bytes); !r)
        logger->warn("{}; spilling at stop still works while the disk has room",
                     r.error().describe());
}

// The journal's items are all in the store (or it had none): clear it, keeping its room, or
// keep a journal with unreadable lines aside under a new name.
void AuditWriter::Impl::finish_replay() {
    if (!spill) return;
    if (spill_set_aside) {
        std::string to = spill->path() + ".bad-" + utc_stamp();
        for (int i = 1; std::filesystem::exists(to); ++i)
            to = spill->path() + ".bad-" + utc_stamp() + "-" + std::to_string(i);
        if (auto r = spill->set_aside(to); !r) {
            // The file stays; the replay marker in the store keeps its items from being
            // written twice.
            logger->error("{}", r.error().describe());
            if (!spill->is_open()) spill.reset();  // renamed, but no fresh one: none from now
            return;
        }
        logger->error(
            "spill journal {}: kept as {} for inspection; its readable items are in "
            "the store",
            spill->path(), to);
        spill_set_aside = false;
        spill_used = 0;
        reserve_spill();
        return;
    }
    if (auto r = spill->clear(spill_used, options.spill_reserve_bytes); !r) {
        logger->error("{}", r.error().describe());
        return;
    }
    spill_used = 0;
}

void AuditWriter::Impl::spill_unwritten(std::vector<Item>& batch, const Error& error) {
    // Everything not yet committed, oldest first: the failed batch, then the queue's data
    // items (waiters stay queued: the caller answers them).
    std::vector<Item> items = std::move(batch);
    batch.clear();
    std::shared_ptr<const Redactions> secrets;
    std::size_t from_queue = items.size();
    {
        std::lock_guard lock(mu);
        // From now on enqueue() refuses data items (logged): nothing can slip in behind the
        // spill and stay in memory, unwritten and unreported.
        finished = true;
        std::deque<Item> waiting;
        for (auto& item : queue) {
            if (std::holds_alternative<std::unique_ptr<Waiter>>(item))
                waiting.push_back(std::move(item));
            else
                items.push_back(std::move(item));
        }
        queue = std::move(waiting);
        secrets = redactions;
    }
    // Redacted and truncated like everything the store gets: a secret must not reach the
    // journal either.
    for (std::size_t i = from_queue; i < items.size(); ++i) sanitize(items[i], *secrets);
    const std::size_t total = items.size();
    if (total == 0) return;
    if (!spill) {
        logger->error("store {}: stopping with {} audit items NOT written (no spill journal): {}",
                      db.path(), total, error.describe());
        return;
    }
    if (spill_set_aside) finish_replay();  // keep the unreadable journal, spill into a fresh one
    if (!spill) {
        logger->error("store {}: stopping with {} audit items NOT written (no spill journal): {}",
                      db.path(), total, error.describe());
        return;
    }
    std::vector<std::string> lines;
    lines.reserve(total + 1);
    lines.push_back(spill_header(new_spill_id()));
    for (auto& item : items) {
        if (auto s = to_spill_item(std::move(item))) lines.push_back(spill_line(*s));
    }
    auto written = spill->write(lines, spill_used);
    const std::size_t saved = written.lines > 0 ? written.lines - 1 : 0;
    std::size_t bytes = 0;
    for (std::size_t i = 0; i < written.lines; ++i) bytes += lines[i].size();
    // After a failure the torn line and older content were zeroed, unless zeroing failed too:
    // remember the larger extent so that a later write still covers it.
    spill_used = written.error ? std::max(bytes, spill_used) : bytes;
    {
        std::lock_guard lock(mu);
        depth -= std::min(depth, saved);
        spilled += saved;
    }
    if (!written.error) {
        logger->warn(
            "store {}: {} item(s) could not be written ({}); spilled them to {}: the "
            "next start replays them",
            db.path(), saved, error.describe(), spill->path());
    } else if (written.lines == lines.size()) {
        logger->error(
            "store {}: spilled {} item(s) to {} but {}: they may not survive a power "
            "loss; store error: {}",
            db.path(), saved, spill->path(), written.error->describe(), error.describe());
    } else {
        logger->error(
            "store {}: stopping with {} audit items NOT written: {} spilled to {}, {} "
            "LOST ({}); store error: {}",
            db.path(), total - saved, saved, spill->path(), total - saved,
            written.error->describe(), error.describe());
    }
}

void AuditWriter::Impl::run() {
    std::vector<Item> batch;  // taken, sanitized, not yet committed: survives a failed attempt
    std::vector<Item> incoming;
    std::vector<std::unique_ptr<Waiter>> waiters;
    auto delay = first_retry_delay;
    bool failing = false;
    bool stop_seen = false;  // the stop request has already woken a backoff wait once
    int failures = 0;        // consecutive failed attempts
    int stop_failures = 0;   // failed attempts since stop() was asked
    auto last_commit = std::chrono::steady_clock::time_point{};  // start of the latest attempt
    for (;;) {
        std::shared_ptr<const Redactions> secrets;
        bool stop_requested;
        {
            std::unique_lock lock(mu);
            if (failing) {
                // Retry after the backoff, or at once for someone awaiting durable() or for
                // the stop request; while stopping, only short pauses.
                cv.wait_for(lock, stopping ? std::min(delay, stop_retry_delay) : delay,
                            [&] { return queued_waiters > 0 || (stopping && !stop_seen); });
                stop_seen = stopping;
            } else {
                cv.wait(lock, [&] { return stopping || !queue.empty(); });
                // Let a trickle of events gather into one transaction (one fsync), unless
                // someone awaits durable() or a full batch is already here.
                if (options.commit_interval.count() > 0)
                    cv.wait_until(lock, last_commit + options.commit_interval, [&] {
                        return stopping || queued_waiters > 0 ||
                               queue.size() - queued_waiters >= options.max_batch;
                    });
            }
            take(incoming, waiters,
                 options.max_batch > batch.size() ? options.max_batch - batch.size() : 0);
            stop_requested = stopping;
            if (stop_requested && batch.empty() && incoming.empty() && waiters.empty() &&
                queue.empty()) {
                // In the same critical section as the check: an item recorded from now on is
                // refused loudly by enqueue() instead of staying queued, unwritten, unlogged.
                finished = true;
                break;
            }
            secrets = redactions;
        }
        for (auto& item : incoming) {
            sanitize(item, *secrets);
            batch.push_back(std::move(item));
        }
        incoming.clear();

        last_commit = std::chrono::steady_clock::now();
        Outcome out = write(batch);
        if (out.result) {
            const std::size_t done = batch.size();
            batch.clear();
            {
                std::lock_guard lock(mu);
                depth -= done;
                committed += done - out.rejected;
                rejected += out.rejected;
                last_error = out.rejection;
                attempt_failed = false;
            }
            if (replay_left > 0) {
                const auto replayed_now = std::min<std::uint64_t>(replay_left, done);
                replay_left -= replayed_now;
                replay_done += replayed_now;
                if (replay_left == 0) finish_replay();
            }
            if (failing)
                logger->info("store {}: audit writes recovered after {} failed attempts", db.path(),
                             failures);
            failing = false;
            failures = 0;
            delay = first_retry_delay;
            for (auto& w : waiters) {
                if (out.rejection)
                    w->complete(*out.rejection);
                else
                    w->complete(Result<void>());
            }
            waiters.clear();
            continue;
        }

        const Error& error = out.result.error();
        {
            // Every waiter still queued is behind the failed batch: it fails too, now, rather
            // than wait out an outage of unknown length.
            std::lock_guard lock(mu);
            last_error = error;
            attempt_failed = true;
            for (auto& w : take_all_waiters()) waiters.push_back(std::move(w));
        }
        // The first failure and every tenth after it: a long outage must not flood the log.
        if (failures % 10 == 0)
            logger->warn("{}; keeping them for retry (attempt {})", error.describe(), failures + 1);
        ++failures;
        failing = true;
        delay = std::min(delay * 2, options.max_retry_delay);
        for (auto& w : waiters) w->complete(error);
        waiters.clear();
        if (stop_requested && ++stop_failures >= options.stop_attempts) {
            spill_unwritten(batch, error);
            break;
        }
    }

    // Nothing will be written any more: answer everyone still waiting.
    std::vector<std::unique_ptr<Waiter>> late;
    std::optional<Error> error;
    {
        std::lock_guard lock(mu);
        finished = true;
        late = take_all_waiters();
        error = stopped_error();
    }
    for (auto& w : late) {
        if (error)
            w->complete(*error);
        else
            w->complete(Result<void>());
    }
}

AuditWriter::AuditWriter(std::string db_path)
    : AuditWriter(std::move(db_path), AuditWriterOptions()) {}

AuditWriter::AuditWriter(std::string db_path, AuditWriterOptions options)
    : impl_(std::make_unique<Impl>(std::move(db_path), std::move(options))) {}

AuditWriter::~AuditWriter() {
    stop();
}

void AuditWriter::start() {
    std::lock_guard lock(impl_->mu);
    if (impl_->started || impl_->stopping) return;
    impl_->started = true;
    impl_->thread = std::thread([impl = impl_.get()] { impl->run(); });
}

void AuditWriter::stop() {
    std::lock_guard stop_lock(impl_->stop_mu);
    bool run_here;
    {
        std::lock_guard lock(impl_->mu);
        if (impl_->finished) return;
        impl_->stopping = true;
        run_here = !impl_->started;
    }
    impl_->cv.notify_all();
    if (run_here)
        impl_->run();  // never started: drain on this thread, the connection is unused
    else if (impl_->thread.joinable())
        impl_->thread.join();
}

void AuditWriter::record(AuditEvent event) {
    if (event.ts_ms == 0) event.ts_ms = now_ms();
    impl_->enqueue(std::move(event));
}

void AuditWriter::upsert_node_result(NodeResult result) {
    impl_->enqueue(std::move(result));
}

void AuditWriter::upsert_rollout(RolloutRecord rollout) {
    impl_->enqueue(std::move(rollout));
}

void AuditWriter::upsert_task(TaskRecord task) {
    impl_->enqueue(std::move(task));
}

void AuditWriter::upsert_inventory_node(InventoryNodeRecord node) {
    impl_->enqueue(std::move(node));
}

void AuditWriter::upsert_artifact(ArtifactRecord artifact) {
    impl_->enqueue(std::move(artifact));
}

void AuditWriter::upsert_outbox(OutboxRecord delivery) {
    impl_->enqueue(std::move(delivery));
}

void AuditWriter::record_idempotency(IdempotencyRecord answer) {
    impl_->enqueue(std::move(answer));
}

void AuditWriter::set_redactions(std::vector<std::string> secrets) {
    std::erase_if(secrets, [](const std::string& s) { return s.empty(); });
    // Longest first: a secret that contains another is replaced whole.
    std::sort(secrets.begin(), secrets.end(),
              [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    auto shared = std::make_shared<const Redactions>(std::move(secrets));
    std::lock_guard lock(impl_->mu);
    impl_->redactions = std::move(shared);
}

boost::asio::awaitable<Result<void>> AuditWriter::durable() {
    Impl* impl = impl_.get();
    co_return co_await boost::asio::async_initiate<const boost::asio::use_awaitable_t<>&,
                                                   void(Result<void>)>(
        [impl](auto handler) {
            impl->enqueue(std::make_unique<WaiterFor<decltype(handler)>>(std::move(handler)));
        },
        boost::asio::use_awaitable);
}

std::size_t AuditWriter::queue_depth() const {
    std::lock_guard lock(impl_->mu);
    return impl_->depth;
}

std::optional<Error> AuditWriter::last_error() const {
    std::lock_guard lock(impl_->mu);
    return impl_->last_error;
}

std::uint64_t AuditWriter::committed() const {
    std::lock_guard lock(impl_->mu);
    return impl_->committed;
}

std::uint64_t AuditWriter::rejected() const {
    std::lock_guard lock(impl_->mu);
    return impl_->rejected;
}

bool AuditWriter::degraded() const {
    std::lock_guard lock(impl_->mu);
    return impl_->attempt_failed;
}

std::uint64_t AuditWriter::replayed() const {
    std::lock_guard lock(impl_->mu);
    return impl_->replayed;
}

std::uint64_t AuditWriter::spilled() const {
    std::lock_guard lock(impl_->mu);
    return impl_->spilled;
}

std::string AuditWriter::spill_path() const {
    // Set once in the constructor, never changed after (a journal renamed aside is replaced
    // by a fresh one under the same name): no lock needed.
    return impl_->spill_path_name;
}

void AuditWriter::set_query_only_for_test(bool on) {
    impl_->query_only_request = on ? 1 : 0;
}

}  // namespace guardia::store
