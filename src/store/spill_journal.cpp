#include "guardia/store/spill_journal.hpp"

#include "detail/spill_file.hpp"

#include <boost/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <optional>

namespace guardia::store {

namespace json = boost::json;

namespace {

json::value optional_value(const std::optional<std::int64_t>& v) {
    return v ? json::value(*v) : json::value(nullptr);
}

json::object to_object(const SpillItem& item) {
    json::object o;
    if (const auto* e = std::get_if<AuditEvent>(&item)) {
        o["kind"] = "audit_event";
        o["ts_ms"] = e->ts_ms;
        o["sr_id"] = e->sr_id;
        o["rollout_id"] = e->rollout_id;
        o["node"] = e->node;
        o["step"] = e->step;
        o["event"] = e->event;
        o["exit_code"] = e->exit_code ? json::value(std::int64_t{*e->exit_code}) : nullptr;
        o["duration_ms"] = optional_value(e->duration_ms);
        o["detail"] = e->detail;
        o["principal"] = e->principal;
    } else if (const auto* n = std::get_if<NodeResult>(&item)) {
        o["kind"] = "node_result";
        o["rollout_id"] = n->rollout_id;
        o["node"] = n->node;
        o["status"] = n->status;
        o["step"] = n->step;
        o["error"] = n->error;
        o["started_ms"] = optional_value(n->started_ms);
        o["finished_ms"] = optional_value(n->finished_ms);
        o["backup_path"] = n->backup_path;
    } else if (const auto* r = std::get_if<RolloutRecord>(&item)) {
        o["kind"] = "rollout";
        o["id"] = r->id;
        o["sr_id"] = r->sr_id;
        o["status"] = r->status;
        o["reason"] = r->reason;
        o["created_ms"] = r->created_ms;
        o["finished_ms"] = optional_value(r->finished_ms);
        o["owner"] = r->owner;
    } else if (const auto* t = std::get_if<TaskRecord>(&item)) {
        o["kind"] = "task";
        o["sr_id"] = t->sr_id;
        o["status"] = t->status;
        o["requester"] = t->requester;
        o["approver"] = t->approver;
        o["inst_id"] = t->inst_id;
        o["system_name"] = t->system_name;
        o["rollout_id"] = t->rollout_id;
        o["reason"] = t->reason;
        o["created_ms"] = t->created_ms;
        o["updated_ms"] = t->updated_ms;
        o["payload"] = t->payload;
    } else if (const auto* i = std::get_if<InventoryNodeRecord>(&item)) {
        o["kind"] = "inventory_node";
        o["name"] = i->name;
        o["inst_id"] = i->inst_id;
        o["system_name"] = i->system_name;
        o["payload"] = i->payload;
    } else if (const auto* a = std::get_if<ArtifactRecord>(&item)) {
        o["kind"] = "artifact";
        o["sr_id"] = a->sr_id;
        o["name"] = a->name;
        o["path"] = a->path;
        o["sha256"] = a->sha256;
        o["size"] = a->size;
        o["created_ms"] = a->created_ms;
    } else if (const auto* d = std::get_if<OutboxRecord>(&item)) {
        o["kind"] = "outbox";
        o["id"] = d->id;
        o["event"] = d->event;
        o["sr_id"] = d->sr_id;
        o["url"] = d->url;
        o["headers"] = d->headers;
        o["body"] = d->body;
        o["attempts"] = d->attempts;
        o["next_attempt_ms"] = d->next_attempt_ms;
        o["created_ms"] = d->created_ms;
        o["delivered_ms"] = optional_value(d->delivered_ms);
        o["gave_up_ms"] = optional_value(d->gave_up_ms);
        o["last_error"] = d->last_error;
    } else if (const auto* k = std::get_if<IdempotencyRecord>(&item)) {
        o["kind"] = "idempotency";
        o["key"] = k->key;
        o["request"] = k->request;
        o["status"] = std::int64_t{k->status};
        o["body"] = k->body;
        o["created_ms"] = k->created_ms;
    }
    return o;
}

// Reads one line's members; the first problem wins and names the member.
class Fields {
  public:
    explicit Fields(const json::object& o) : o_(o) {}
    const std::string& problem() const { return problem_; }

    void text(const char* name, std::string& out) {
        const json::value* v = find(name);
        if (v == nullptr) return;
        if (!v->is_string()) return fail(name, "is not a string");
        out.assign(v->get_string().data(), v->get_string().size());
    }
    void int64(const char* name, std::int64_t& out) {
        const json::value* v = find(name);
        if (v == nullptr) return;
        if (auto i = as_int64(*v))
            out = *i;
        else
            fail(name, "is not an integer");
    }
    // Absent or null: empty.
    void optional_int64(const char* name, std::optional<std::int64_t>& out) {
        out.reset();
        const auto* v = o_.if_contains(name);
        if (v == nullptr || v->is_null()) return;
        if (auto i = as_int64(*v))
            out = *i;
        else
            fail(name, "is not an integer or null");
    }
    void optional_int(const char* name, std::optional<int>& out) {
        std::optional<std::int64_t> wide;
        optional_int64(name, wide);
        out.reset();
        if (!wide) return;
        if (*wide < std::numeric_limits<int>::min() || *wide > std::numeric_limits<int>::max())
            return fail(name, "is out of range");
        out = static_cast<int>(*wide);
    }
    void integer(const char* name, int& out) {
        std::int64_t wide = 0;
        int64(name, wide);
        if (wide < std::numeric_limits<int>::min() || wide > std::numeric_limits<int>::max())
            return fail(name, "is out of range");
        out = static_cast<int>(wide);
    }

  private:
    const json::value* find(const char* name) {
        const auto* v = o_.if_contains(name);
        if (v == nullptr) fail(name, "is missing");
        return v;
    }
    static std::optional<std::int64_t> as_int64(const json::value& v) {
        if (v.is_int64()) return v.get_int64();
        if (v.is_uint64() &&
            v.get_uint64() <= std::uint64_t{std::numeric_limits<std::int64_t>::max()})
            return static_cast<std::int64_t>(v.get_uint64());
        return std::nullopt;
    }
    void fail(const char* name, const char* why) {
        if (problem_.empty()) problem_ = std::string("member \"") + name + "\" " + why;
    }

    const json::object& o_;
    std::string problem_;
};

// One item line (without its newline): the item, or why not.
std::variant<SpillItem, std::string> parse_item(std::string_view line) {
    json::parse_options options;
    options.allow_invalid_utf8 = true;  // written as is from an stderr tail: read back as is
    boost::system::error_code ec;
    json::value v = json::parse(line, ec, json::storage_ptr(), options);
    if (ec) return "not JSON (" + ec.message() + ")";
    if (!v.is_object()) return std::string("not a JSON object");
    const auto& o = v.get_object();
    const auto* kind_value = o.if_contains("kind");
    if (kind_value == nullptr || !kind_value->is_string())
        return std::string("no \"kind\" string member");
    const std::string_view kind(kind_value->get_string());
    Fields f(o);
    SpillItem item;
    if (kind == "audit_event") {
        AuditEvent e;
        f.int64("ts_ms", e.ts_ms);
        f.text("sr_id", e.sr_id);
        f.text("rollout_id", e.rollout_id);
        f.text("node", e.node);
        f.text("step", e.step);
        f.text("event", e.event);
        f.optional_int("exit_code", e.exit_code);
        f.optional_int64("duration_ms", e.duration_ms);
        f.text("detail", e.detail);
        f.text("principal", e.principal);
        item = std::move(e);
    } else if (kind == "node_result") {
        NodeResult n;
        f.text("rollout_id", n.rollout_id);
        f.text("node", n.node);
        f.text("status", n.status);
        f.text("step", n.step);
        f.text("error", n.error);
        f.optional_int64("started_ms", n.started_ms);
        f.optional_int64("finished_ms", n.finished_ms);
        f.text("backup_path", n.backup_path);
        item = std::move(n);
    } else if (kind == "rollout") {
        RolloutRecord r;
        f.text("id", r.id);
        f.text("sr_id", r.sr_id);
        f.text("status", r.status);
        f.text("reason", r.reason);
        f.int64("created_ms", r.created_ms);
        f.optional_int64("finished_ms", r.finished_ms);
        f.text("owner", r.owner);  // absent in journals of schema 5
        item = std::move(r);
    } else if (kind == "task") {
        TaskRecord t;
        f.text("sr_id", t.sr_id);
        f.text("status", t.status);
        f.text("requester", t.requester);
        f.text("approver", t.approver);
        f.text("inst_id", t.inst_id);
        f.text("system_name", t.system_name);
        f.text("rollout_id", t.rollout_id);
        f.text("reason", t.reason);
        f.int64("created_ms", t.created_ms);
        f.int64("updated_ms", t.updated_ms);
        f.text("payload", t.payload);
        item = std::move(t);
    } else if (kind == "inventory_node") {
        InventoryNodeRecord i;
        f.text("name", i.name);
        f.text("inst_id", i.inst_id);
        f.text("system_name", i.system_name);
        f.text("payload", i.payload);
        item = std::move(i);
    } else if (kind == "artifact") {
        ArtifactRecord a;
        f.text("sr_id", a.sr_id);
        f.text("name", a.name);
        f.text("path", a.path);
        f.text("sha256", a.sha256);
        f.int64("size", a.size);
        f.int64("created_ms", a.created_ms);
        item = std::move(a);
    } else if (kind == "outbox") {
        OutboxRecord d;
        f.text("id", d.id);
        f.text("event", d.event);
        f.text("sr_id", d.sr_id);
        f.text("url", d.url);
        f.text("headers", d.headers);
        f.text("body", d.body);
        f.int64("attempts", d.attempts);
        f.int64("next_attempt_ms", d.next_attempt_ms);
        f.int64("created_ms", d.created_ms);
        f.optional_int64("delivered_ms", d.delivered_ms);
        f.optional_int64("gave_up_ms", d.gave_up_ms);
        f.text("last_error", d.last_error);
        item = std::move(d);
    } else if (kind == "idempotency") {
        IdempotencyRecord k;
        f.text("key", k.key);
        f.text("request", k.request);
        f.integer("status", k.status);
        f.text("body", k.body);
        f.int64("created_ms", k.created_ms);
        item = std::move(k);
    } else {
        return "unknown kind \"" + std::string(kind) + "\"";
    }
    if (!f.problem().empty()) return std::string(kind) + ": " + f.problem();
    return item;
}

// "<message>: <strerror>": Error::describe() shows only the code's number, and an operator
// needs the reason (No space left on device) in the log line.
Error errno_error(int e, std::string message) {
    boost::system::error_code code(e, boost::system::system_category());
    message += ": ";
    message += code.message();
    return Error(code, std::move(message));
}

// Full pwrite at `offset`: retries short writes and EINTR. Returns the bytes written before
// an error (errno set) or all of them.
std::size_t pwrite_all(int fd, const char* data, std::size_t size, std::size_t offset) {
    std::size_t done = 0;
    while (done < size) {
        ssize_t n = ::pwrite(fd, data + done, size - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return done;
        }
        if (n == 0) {
            errno = ENOSPC;
            return done;
        }
        done += static_cast<std::size_t>(n);
    }
    return done;
}

// A new or renamed file survives a power loss only once its directory entry is synced.
void sync_parent(const std::string& path) {
    const auto slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "."
                            : slash == 0               ? "/"
                                                       : path.substr(0, slash);
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)::fsync(fd);
    ::close(fd);
}

}  // namespace

std::string spill_header(std::string_view id) {
    json::object o;
    o["guardia_spill"] = spill_format_version;
    o["id"] = id;
    return json::serialize(o) + '\n';
}

std::string spill_line(const SpillItem& item) {
    return json::serialize(to_object(item)) + '\n';
}

SpillContents parse_spill(std::string_view bytes) {
    SpillContents out;
    const auto nul = bytes.find('\0');
    const std::string_view used = bytes.substr(0, nul);
    out.used_bytes = used.size();
    out.empty = used.empty();
    std::size_t pos = 0;
    std::size_t number = 0;
    while (pos < used.size()) {
        ++number;
        const auto end = used.find('\n', pos);
        if (end == std::string_view::npos) {
            out.problems.push_back([&] {
                SpillProblem p;
                p.line = number;
                p.reason = "incomplete line (no newline: a write was cut short), ignored";
                return p;
            }());
            break;
        }
        const std::string_view line = used.substr(pos, end - pos);
        pos = end + 1;
        auto problem = [&](std::string reason) {
            SpillProblem p;
            p.line = number;
            p.reason = std::move(reason);
            out.problems.push_back(std::move(p));
        };
        if (number == 1) {
            boost::system::error_code ec;
            json::value v = json::parse(line, ec);
            const json::value* version =
                !ec && v.is_object() ? v.get_object().if_contains("guardia_spill") : nullptr;
            if (version == nullptr || !version->is_int64()) {
                problem("not a spill journal header ({\"guardia_spill\":1,...} expected)");
                return out;
            }
            out.version =
                static_cast<int>(std::clamp<std::int64_t>(version->get_int64(), -1, 1000));
            if (out.version != spill_format_version) {
                problem("journal format version " + std::to_string(version->get_int64()) +
                        " is not known to this Guardia (it reads version " +
                        std::to_string(spill_format_version) + ")");
                return out;
            }
            if (const auto* id = v.get_object().if_contains("id"); id && id->is_string())
                out.id = std::string(id->get_string());
            continue;
        }
        auto parsed = parse_item(line);
        if (auto* item = std::get_if<SpillItem>(&parsed))
            out.items.push_back(std::move(*item));
        else
            problem(std::get<std::string>(parsed));
    }
    return out;
}

namespace detail {

Result<SpillFile> SpillFile::open(std::string path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return errno_error(errno, "spill journal " + path + ": cannot open");
    SpillFile file(std::move(path), fd);  // owns fd from here
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            return Error(errc::node_locked, "spill journal " + file.path_ +
                                                ": held by another audit writer on this database");
        return errno_error(errno, "spill journal " + file.path_ + ": cannot lock");
    }
    return file;
}

SpillFile::~SpillFile() {
    if (fd_ >= 0) ::close(fd_);
}

SpillFile::SpillFile(SpillFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

SpillFile& SpillFile::operator=(SpillFile&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        path_ = std::move(other.path_);
        fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
}

Result<std::string> SpillFile::read_all() const {
    std::string bytes;
    std::array<char, 65536> buffer;
    for (std::size_t offset = 0;;) {
        ssize_t n = ::pread(fd_, buffer.data(), buffer.size(), static_cast<off_t>(offset));
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno_error(errno, "spill journal " + path_ + ": cannot read");
        }
        if (n == 0) break;
        const std::string_view chunk(buffer.data(), static_cast<std::size_t>(n));
        offset += chunk.size();
        // Only what precedes the first NUL counts: the reserve can be large, skip reading it.
        if (const auto nul = chunk.find('\0'); nul != std::string_view::npos) {
            bytes.append(chunk.substr(0, nul + 1));
            break;
        }
        bytes.append(chunk);
    }
    return bytes;
}

Result<void> SpillFile::reserve(std::size_t bytes) {
    if (bytes == 0) return {};
    // posix_fallocate returns the error instead of setting errno.
    if (int e = ::posix_fallocate(fd_, 0, static_cast<off_t>(bytes)); e != 0)
        return errno_error(
            e, "spill journal " + path_ + ": cannot reserve " + std::to_string(bytes) + " bytes");
    if (::fsync(fd_) != 0)
        return errno_error(errno, "spill journal " + path_ + ": cannot sync the reserve");
    sync_parent(path_);
    return {};
}

Result<void> SpillFile::zero(std::size_t from, std::size_t to) {
    static const std::array<char, 65536> zeros{};
    for (std::size_t at = from; at < to;) {
        const std::size_t n = std::min(zeros.size(), to - at);
        if (pwrite_all(fd_, zeros.data(), n, at) != n)
            return errno_error(errno, "spill journal " + path_ + ": cannot clear");
        at += n;
    }
    return {};
}

SpillFile::Written SpillFile::write(const std::vector<std::string>& lines, std::size_t stale_end) {
    Written out;
    std::size_t offset = 0;
    for (const auto& line : lines) {
        const std::size_t n = pwrite_all(fd_, line.data(), line.size(), offset);
        if (n != line.size()) {
            out.error = errno_error(errno, "spill journal " + path_ + ": cannot write line " +
                                               std::to_string(out.lines + 1));
            // Take the torn line back (its bytes exist already: zeroing needs no room), so
            // nothing but complete lines precede the first NUL.
            (void)zero(offset, std::max(offset + n, stale_end));
            (void)::fsync(fd_);
            return out;
        }
        offset += n;
        ++out.lines;
    }
    if (offset < stale_end) {
        if (auto r = zero(offset, stale_end); !r) out.error = r.error();
    } else {
        // Past the older content: the reserve's zeros (or the end of the file) follow.
    }
    if (::fsync(fd_) != 0 && !out.error)
        out.error = errno_error(errno, "spill journal " + path_ + ": cannot sync");
    return out;
}

Result<void> SpillFile::clear(std::size_t used, std::size_t reserve_bytes) {
    if (auto r = zero(0, used); !r) return r;
    struct stat st {};
    if (::fstat(fd_, &st) == 0 && static_cast<std::size_t>(st.st_size) > reserve_bytes &&
        ::ftruncate(fd_, static_cast<off_t>(reserve_bytes)) != 0)
        return errno_error(errno, "spill journal " + path_ + ": cannot shrink");
    if (::fsync(fd_) != 0) return errno_error(errno, "spill journal " + path_ + ": cannot sync");
    return {};
}

Result<void> SpillFile::set_aside(const std::string& to) {
    if (::rename(path_.c_str(), to.c_str()) != 0)
        return errno_error(errno, "spill journal " + path_ + ": cannot rename to " + to);
    sync_parent(path_);
    auto fresh = open(path_);
    if (!fresh) {
        // Our descriptor now names the kept file: writing a spill there would destroy it.
        ::close(std::exchange(fd_, -1));
        return fresh.error();
    }
    *this = std::move(*fresh);
    return {};
}

}  // namespace detail
}  // namespace guardia::store
