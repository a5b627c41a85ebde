#include "guardia/deploy/node_pipeline.hpp"

#include "guardia/core/digest.hpp"
#include "guardia/core/sanitizer.hpp"
#include "guardia/core/shell.hpp"
#include "guardia/deploy/credential_store.hpp"
#include "guardia/http/health_probe.hpp"
#include "guardia/ssh/session.hpp"
#include "guardia/store/audit_writer.hpp"

#include <boost/asio/this_coro.hpp>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <optional>
#include <sstream>

namespace guardia::deploy {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string_view to_string(NodeOutcome outcome) noexcept {
    switch (outcome) {
        case NodeOutcome::deployed: return "DEPLOYED";
        case NodeOutcome::failed_unchanged: return "FAILED_UNCHANGED";
        case NodeOutcome::rolled_back: return "ROLLED_BACK";
        case NodeOutcome::rollback_failed: return "ROLLBACK_FAILED";
    }
    return "UNKNOWN";
}

Result<ArtifactSpec> describe_artifact(const std::string& path, std::uint64_t keep_in_memory_up_to) {
    struct stat size_check {};
    if (::stat(path.c_str(), &size_check) == 0 && S_ISREG(size_check.st_mode) &&
        static_cast<std::uint64_t>(size_check.st_size) <= keep_in_memory_up_to) {
        auto bytes = ArtifactBytes::read_file(path);
        if (!bytes) return Error(bytes.error().code, "artifact " + bytes.error().message);
        ArtifactSpec spec;
        spec.local_path = path;
        auto slash = path.rfind('/');
        spec.file_name = slash == std::string::npos ? path : path.substr(slash + 1);
        spec.sha256 = (*bytes)->sha256();
        spec.md5 = (*bytes)->md5();
        spec.size = (*bytes)->size();
        spec.mode = (*bytes)->mode() & 0777u;
        spec.bytes = std::move(*bytes);
        return spec;
    }
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return Error(errc::local_io_failed, "artifact " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return Error(errc::local_io_failed, "artifact " + path + " is not a regular file");
    }
    StreamDigests digests;
    std::vector<char> buf(1 << 20);
    std::uint64_t total = 0;
    for (;;) {
        ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            ::close(fd);
            return Error(errc::local_io_failed, "reading artifact " + path + ": " + std::strerror(e));
        }
        if (n == 0) break;
        digests.update(buf.data(), static_cast<std::size_t>(n));
        total += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
    ArtifactSpec spec;
    digests.finish(spec.sha256, spec.md5);
    spec.local_path = path;
    auto slash = path.rfind('/');
    spec.file_name = slash == std::string::npos ? path : path.substr(slash + 1);
    spec.size = total;
    spec.mode = static_cast<unsigned>(st.st_mode) & 0777u;
    return spec;
}

namespace {

std::string utc_stamp() {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y%m%d_%H%M%S", &tm);
    return buf;
}

std::int64_t ms(Clock::duration d) {
    return std::chrono::duration_cast<milliseconds>(d).count();
}

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    return s;
}

// Absolute paths named in a command ("sh /app/bin/start.sh -q" -> "/app/bin/start.sh"), so the
// pre-check can confirm the scripts exist before anything changes.
std::vector<std::string> paths_in(const std::string& command) {
    std::vector<std::string> out;
    std::istringstream words(command);
    std::string w;
    while (words >> w)
        if (w.size() > 1 && w[0] == '/' && w.find_first_of("'\"$`;&|<>*?") == std::string::npos)
            out.push_back(w);
    return out;
}

// Where the pipeline has got to: it decides what a failure must undo. `lock_unknown`: the LOCK
// command was sent but its answer was lost (deadline, connection), so we may hold the lock.
enum class Stage { nothing, lock_unknown, locked, backed_up, staged, live_changed };

class Pipeline {
public:
    Pipeline(const Node& node, const std::vector<ArtifactSpec>& artifacts,
             const PipelineSettings& settings)
        : node_(node), artifacts_(artifacts), settings_(settings) {
        report_.node = node.name;
        d_ = shell_quote(node.deploy_path);
        lock_path_ = node.deploy_path + ".lock";
    }

    asio::awaitable<NodeReport> run();

private:
    // --- audit ----------------------------------------------------------------------------
    void audit(const std::string& step, const std::string& event, std::optional<int> exit_code,
               std::optional<std::int64_t> duration_ms, std::string detail) {
        if (settings_.logger)
            settings_.logger->debug("{} {} {} {}", node_.name, step, event, detail);
        if (settings_.audit == nullptr) return;
        store::AuditEvent e;
        e.sr_id = settings_.sr_id;
        e.rollout_id = settings_.rollout_id;
        e.node = node_.name;
        e.step = step;
        e.event = event;
        e.exit_code = exit_code;
        e.duration_ms = duration_ms;
        e.detail = std::move(detail);
        settings_.audit->record(std::move(e));
    }

    // A step: audited start, then exactly one end (ok / failed), with its duration.
    struct Step {
        Pipeline& p;
        std::string name;
        Clock::time_point started = Clock::now();
        bool ended = false;
        Step(Pipeline& pipeline, std::string step, std::string detail = {})
            : p(pipeline), name(std::move(step)) {
            p.audit(name, "STEP_START", std::nullopt, std::nullopt, std::move(detail));
        }
        void ok(std::string detail = {}, std::optional<int> exit_code = std::nullopt) {
            ended = true;
            p.audit(name, "STEP_OK", exit_code, ms(Clock::now() - started), std::move(detail));
        }
        void failed(const Error& e, std::optional<int> exit_code = std::nullopt) {
            ended = true;
            p.audit(name, "STEP_FAILED", exit_code, ms(Clock::now() - started), e.message);
        }
        ~Step() {
            if (!ended)
                p.audit(name, "STEP_FAILED", std::nullopt, ms(Clock::now() - started), "interrupted");
        }
    };

    Error node_error(boost::system::error_code kind, const std::string& step,
                     const std::string& what) const {
        return Error(kind, "node '" + node_.name + "': " + step + ": " + what);
    }
    Error node_error(errc kind, const std::string& step, const std::string& what) const {
        return node_error(make_error_code(kind), step, what);
    }

    // Every command goes through here: sanitized first (a refusal sends nothing), then run.
    asio::awaitable<Result<ssh::ExecResult>> run(const std::string& step, const std::string& command,
                                                 milliseconds timeout, bool checked) {
        if (auto ok = sanitize_command(command); !ok) {
            audit(step, "SECURITY_VIOLATION", std::nullopt, std::nullopt, ok.error().message);
            co_return node_error(errc::security_violation, step,
                                 ok.error().message + " (command not sent)");
        }
        ssh::ExecOptions eo;
        eo.timeout = timeout;
        // Plain if/else: GCC 12 mishandles co_await inside a conditional expression.
        Result<ssh::ExecResult> r = Error(errc::invalid_argument, "not run");
        if (checked)
            r = co_await session_->exec_checked(command, eo);
        else
            r = co_await session_->exec(command, eo);
        if (!r) co_return Error(r.error().code, "node '" + node_.name + "': " + step + ": " + r.error().message);
        co_return r;
    }

    Result<void> validate();
    asio::awaitable<Result<void>> connect();
    asio::awaitable<Result<void>> precheck();
    asio::awaitable<Result<void>> lock();
    asio::awaitable<Result<void>> backup();
    asio::awaitable<Result<void>> transfer();
    asio::awaitable<Result<void>> restart();
    asio::awaitable<Result<void>> health(const std::string& step);
    asio::awaitable<Result<void>> rollback();
    asio::awaitable<void> discard_staged();
    asio::awaitable<void> unlock();
    asio::awaitable<bool> ensure_session(const std::string& why);

    const Node& node_;
    const std::vector<ArtifactSpec>& artifacts_;
    const PipelineSettings& settings_;
    NodeReport report_;
    std::unique_ptr<ssh::Session> session_;
    Stage stage_ = Stage::nothing;
    std::string d_;  // the deploy path, shell-quoted
    std::string lock_path_;
    std::vector<std::string> staged_;  // staging paths, parallel to artifacts_
};


// The node's own commands are checked before anything at all is sent to it.
Result<void> Pipeline::validate() {
    Step step(*this, "VALIDATE");
    for (const auto* field : {&node_.shutdown_cmd, &node_.startup_cmd}) {
        if (field->empty()) continue;
        if (auto ok = sanitize_command(*field); !ok) {
            const char* name = field == &node_.shutdown_cmd ? "shutdown_cmd" : "startup_cmd";
            audit("VALIDATE", "SECURITY_VIOLATION", std::nullopt, std::nullopt,
                  std::string(name) + ": " + ok.error().message);
            Error e = node_error(errc::security_violation, "VALIDATE",
                                 std::string(name) + ": " + ok.error().message + " (nothing was sent)");
            step.failed(e);
            return e;
        }
    }
    if (artifacts_.empty()) {
        Error e = node_error(errc::invalid_argument, "VALIDATE", "no artifact to deploy");
        step.failed(e);
        return e;
    }
    step.ok();
    return {};
}

asio::awaitable<Result<void>> Pipeline::connect() {
    Step step(*this, "CONNECT", node_.user + "@" + node_.host + ":" + std::to_string(node_.ssh_port));
    auto cred = settings_.credentials ? settings_.credentials->for_node(node_)
                                      : Result<ssh::Credentials>(Error(errc::invalid_argument, "no credential store"));
    if (!cred) {
        Error e = node_error(cred.error().code, "CONNECT", cred.error().message);
        step.failed(e);
        co_return e;
    }
    ssh::ConnectOptions o;
    o.host = node_.host;
    o.port = node_.ssh_port;
    o.credentials = std::move(*cred);
    o.known_hosts = settings_.known_hosts;
    o.host_key_policy = settings_.host_key_policy;
    o.timeout = settings_.connect_timeout;
    o.logger = settings_.logger;
    auto ex = co_await asio::this_coro::executor;
    auto s = co_await ssh::Session::connect(ex, std::move(o));
    if (!s) {
        Error e = node_error(s.error().code, "CONNECT", s.error().message);
        step.failed(e);
        co_return e;
    }
    session_ = std::move(*s);
    step.ok(session_->host_key().type + " " + ssh::sha256_fingerprint(session_->host_key().blob));
    co_return Result<void>{};
}

asio::awaitable<Result<void>> Pipeline::precheck() {
    Step step(*this, "PRECHECK");
    std::string scripts;
    if (node_.requires_restart)
        for (const auto* cmd : {&node_.shutdown_cmd, &node_.startup_cmd})
            for (const auto& path : paths_in(*cmd)) scripts += " " + shell_quote(path);
    // One round trip: the deploy path, room for backups beside it, the scripts, disk usage.
    const std::string cmd =
        "LC_ALL=C; d=" + d_ +
        "; [ -d \"$d\" ] || { echo \"deploy path $d does not exist or is not a directory\" >&2; exit 10; }"
        "; p=$(dirname -- \"$d\"); [ -w \"$p\" ] || { echo \"backup location $p is not writable\" >&2; exit 11; }"
        "; for s in" + (scripts.empty() ? std::string(" ''") : scripts) +
        "; do [ -z \"$s\" ] || [ -e \"$s\" ] || { echo \"script $s not found\" >&2; exit 12; }; done"
        "; df -P -- \"$d\" | awk 'NR==2 { sub(\"%\", \"\", $5); print $5 }'";
    auto r = co_await run("PRECHECK", cmd, settings_.command_timeout, true);
    if (!r) {
        Error e = r.error();
        if (e.code == errc::remote_command_failed) e.code = make_error_code(errc::precheck_failed);
        step.failed(e);
        co_return e;
    }
    const std::string usage_text = trim(r->out);
    int usage = -1;
    try {
        usage = std::stoi(usage_text);
    } catch (...) {
    }
    if (usage < 0) {
        Error e = node_error(errc::remote_command_failed, "PRECHECK",
                             "cannot read disk usage from df -P: '" + usage_text + "'");
        step.failed(e);
        co_return e;
    }
    if (usage > settings_.disk_threshold_percent) {
        Error e = node_error(errc::precheck_failed, "PRECHECK",
                             "disk usage " + std::to_string(usage) + " % of the filesystem holding " +
                                 node_.deploy_path + " is above the threshold of " +
                                 std::to_string(settings_.disk_threshold_percent) + " %");
        step.failed(e);
        co_return e;
    }
    step.ok("disk usage " + std::to_string(usage) + " %");
    co_return Result<void>{};
}

asio::awaitable<Result<void>> Pipeline::lock() {
    Step step(*this, "LOCK", lock_path_);
    // mkdir is atomic: exactly one rollout gets the lock. The owner file says who holds it.
    // Staging files a cut connection left behind in an earlier run are removed under the lock.
    const std::string cmd =
        "d=" + d_ + "; l=" + shell_quote(lock_path_) +
        "; if mkdir -- \"$l\" 2>/dev/null; then printf 'owner=%s\\nrollout=%s\\nsince=%s\\n' " +
        shell_quote(settings_.owner) + " " + shell_quote(settings_.rollout_id) +
        " \"$(date +%s)\" > \"$l/owner\" && rm -f -- \"$d\"/.guardia-stage.* && echo LOCKED; "
        "else echo BUSY; cat -- \"$l/owner\" 2>/dev/null; echo \"now=$(date +%s)\"; fi";
    auto r = co_await run("LOCK", cmd, settings_.command_timeout, true);
    if (!r) {
        // Unless it was refused before sending, the mkdir may have happened: unlock() will
        // remove the lock if (and only if) it is ours.
        if (r.error().code != errc::security_violation) stage_ = Stage::lock_unknown;
        step.failed(r.error());
        co_return r.error();
    }
    if (r->out.rfind("LOCKED", 0) == 0) {
        stage_ = Stage::locked;
        step.ok();
        co_return Result<void>{};
    }
    // Held by someone else. Say by whom and for how long; a stale lock is reported, not stolen.
    std::string owner, rollout;
    long since = 0, now = 0;
    std::istringstream lines(r->out);
    for (std::string line; std::getline(lines, line);) {
        auto eq = line.find('=');
        if (eq == std::string::npos) continue;
        auto key = line.substr(0, eq), value = line.substr(eq + 1);
        if (key == "owner") owner = value;
        else if (key == "rollout") rollout = value;
        else if (key == "since") since = std::atol(value.c_str());
        else if (key == "now") now = std::atol(value.c_str());
    }
    const long age = since > 0 && now >= since ? now - since : -1;
    std::string what = "node is locked by another rollout (" + lock_path_ + ": owner " +
                       (owner.empty() ? "unknown" : owner) + ", rollout " +
                       (rollout.empty() ? "unknown" : rollout) +
                       (age >= 0 ? ", held for " + std::to_string(age) + " s" : std::string()) + ")";
    if (age > settings_.stale_lock_age.count())
        what += "; the lock is STALE (older than " + std::to_string(settings_.stale_lock_age.count()) +
                " s): check that its owner is gone, then remove " + lock_path_ + " by hand";
    Error e = node_error(errc::node_locked, "LOCK", what);
    step.failed(e);
    co_return e;
}

asio::awaitable<Result<void>> Pipeline::backup() {
    const std::string want = node_.deploy_path + ".bak_" + utc_stamp();
    Step step(*this, "BACKUP", want);
    // cp -a keeps modes, times, links. A name already taken (two runs in one second) gets a
    // suffix: copying onto an existing directory would nest the copy inside it.
    const std::string cmd =
        "LC_ALL=C; d=" + d_ + "; b=" + shell_quote(want) +
        "; n=2; c=\"$b\"; while [ -e \"$c\" ]; do c=\"${b}_$n\"; n=$((n+1)); done"
        "; cp -a -- \"$d\" \"$c\" || exit 20"
        "; set -- \"$d\".bak_*; k=$#; for x in \"$@\"; do [ \"$k\" -gt " +
        std::to_string(std::max(1, settings_.keep_backups)) +
        " ] || break; rm -rf -- \"$x\"; k=$((k-1)); done; echo \"$c\"";
    auto r = co_await run("BACKUP", cmd, settings_.backup_timeout, true);
    if (!r) {
        step.failed(r.error());
        co_return r.error();
    }
    report_.backup_path = trim(r->out);
    stage_ = Stage::backed_up;
    step.ok(report_.backup_path);
    co_return Result<void>{};
}

asio::awaitable<Result<void>> Pipeline::transfer() {
    for (const auto& a : artifacts_) {
        const std::string target = node_.deploy_path + "/" + a.file_name;
        Step step(*this, "TRANSFER", a.file_name + " (" + std::to_string(a.size) + " bytes)");
        ssh::UploadOptions uo;
        uo.mode = a.mode;
        uo.rename_into_place = false;  // activated after the service is stopped
        uo.expected_sha256 = a.sha256;  // hashed once for the whole rollout
        uo.timeout = settings_.transfer_timeout;
        // Plain if/else: GCC 12 mishandles co_await inside a conditional expression.
        Result<ssh::UploadResult> up = Error(errc::invalid_argument, "not run");
        if (a.bytes)
            up = co_await session_->upload(a.bytes, target, uo);  // the rollout's shared copy
        else
            up = co_await session_->upload(a.local_path, target, uo);
        if (!up) {
            Error e(up.error().code, "node '" + node_.name + "': TRANSFER: " + up.error().message);
            step.failed(e);
            co_return e;
        }
        if (up->sha256 != a.sha256) {
            // The local file changed since the rollout hashed it: refuse to ship a third version.
            staged_.push_back(up->staging_path);
            Error e = node_error(errc::checksum_mismatch, "TRANSFER",
                                 a.local_path + " changed during the rollout (sha256 " + up->sha256 +
                                     ", expected " + a.sha256 + ")");
            step.failed(e);
            co_return e;
        }
        staged_.push_back(up->staging_path);
        stage_ = Stage::staged;
        step.ok("sha256 " + up->sha256 + " verified remotely (md5 " + a.md5 + ")");
    }
    co_return Result<void>{};
}

asio::awaitable<Result<void>> Pipeline::restart() {
    if (node_.requires_restart) {
        Step step(*this, "SHUTDOWN", node_.shutdown_cmd);
        stage_ = Stage::live_changed;  // from here on the service may be down: roll back on failure
        auto r = co_await run("SHUTDOWN", node_.shutdown_cmd, settings_.shutdown_timeout, true);
        if (!r) {
            step.failed(r.error());
            co_return r.error();
        }
        step.ok({}, r->exit_code);
    }
    {
        Step step(*this, "ACTIVATE");
        std::string cmd;
        for (std::size_t i = 0; i < artifacts_.size(); ++i) {
            if (!cmd.empty()) cmd += " && ";
            cmd += "mv -f -- " + shell_quote(staged_[i]) + " " +
                   shell_quote(node_.deploy_path + "/" + artifacts_[i].file_name);
        }
        stage_ = Stage::live_changed;
        auto r = co_await run("ACTIVATE", cmd, settings_.command_timeout, true);
        if (!r) {
            step.failed(r.error());
            co_return r.error();
        }
        staged_.clear();
        step.ok(std::to_string(artifacts_.size()) + " artifact(s) renamed into place");
    }
    if (node_.requires_restart) {
        Step step(*this, "STARTUP", node_.startup_cmd);
        auto r = co_await run("STARTUP", node_.startup_cmd, settings_.startup_timeout, true);
        if (!r) {
            step.failed(r.error());
            co_return r.error();
        }
        step.ok({}, r->exit_code);
    }
    co_return Result<void>{};
}

asio::awaitable<Result<void>> Pipeline::health(const std::string& step_name) {
    http::HealthCheck hc;
    hc.host = node_.host;
    hc.port = node_.health.port;
    hc.path = node_.health.path;
    hc.timeout = node_.health.timeout;
    hc.interval = node_.health.interval;
    hc.required_consecutive = node_.tier == 1 ? settings_.strict_consecutive : 1;
    hc.node = node_.name;
    Step step(*this, step_name,
              "http://" + node_.host + ":" + std::to_string(node_.health.port) + node_.health.path +
                  (hc.required_consecutive > 1
                       ? " (strict: " + std::to_string(hc.required_consecutive) + " consecutive 200s)"
                       : std::string()));
    auto r = co_await http::wait_healthy(hc);
    if (!r) {
        Error e(r.error().code, "node '" + node_.name + "': " + step_name + ": " + r.error().message);
        step.failed(e);
        co_return e;
    }
    step.ok(std::to_string(r->attempts) + " attempt(s)", r->last_status);
    co_return Result<void>{};
}

// A session for clean-up work: the pipeline's own if it still works, else a fresh one (a cut
// connection must not leave the lock or staging files behind).
asio::awaitable<bool> Pipeline::ensure_session(const std::string& why) {
    if (session_ && session_->usable()) co_return true;
    session_.reset();
    auto cred = settings_.credentials->for_node(node_);
    if (!cred) co_return false;
    ssh::ConnectOptions o;
    o.host = node_.host;
    o.port = node_.ssh_port;
    o.credentials = std::move(*cred);
    o.known_hosts = settings_.known_hosts;
    o.host_key_policy = ssh::HostKeyPolicy::strict;  // the key was verified on the first connect
    o.timeout = settings_.connect_timeout;
    auto ex = co_await asio::this_coro::executor;
    auto s = co_await ssh::Session::connect(ex, std::move(o));
    if (!s) {
        audit("RECONNECT", "STEP_FAILED", std::nullopt, std::nullopt, why + ": " + s.error().message);
        co_return false;
    }
    session_ = std::move(*s);
    audit("RECONNECT", "STEP_OK", std::nullopt, std::nullopt, why);
    co_return true;
}

asio::awaitable<void> Pipeline::discard_staged() {
    if (!co_await ensure_session("discard staged artifacts")) co_return;
    Step step(*this, "DISCARD_STAGED");
    // Our staging files, and any another cut run left (same recognisable prefix).
    auto r = co_await run("DISCARD_STAGED", "rm -f -- " + d_ + "/.guardia-stage.*",
                          settings_.command_timeout, true);
    if (r) {
        staged_.clear();
        step.ok();
    } else {
        step.failed(r.error());
    }
}

asio::awaitable<Result<void>> Pipeline::rollback() {
    Step step(*this, "ROLLBACK", "restore " + report_.backup_path);
    if (!co_await ensure_session("rollback")) {
        Error e = node_error(errc::connection_lost, "ROLLBACK", "cannot reach the node to roll back");
        step.failed(e);
        co_return e;
    }
    std::vector<std::string> notes;
    if (node_.requires_restart) {
        // Stop whatever runs now. A shutdown that fails again is noted, not fatal: the restore
        // and the health check of the restored service decide.
        Step s(*this, "ROLLBACK_SHUTDOWN", node_.shutdown_cmd);
        auto r = co_await run("ROLLBACK_SHUTDOWN", node_.shutdown_cmd, settings_.shutdown_timeout, true);
        if (r) s.ok({}, r->exit_code);
        else {
            s.failed(r.error());
            notes.push_back("shutdown: " + r.error().message);
            if (!session_->usable() && !co_await ensure_session("rollback after shutdown failure")) {
                Error e = node_error(errc::connection_lost, "ROLLBACK", "lost the node during rollback");
                step.failed(e);
                co_return e;
            }
        }
    }
    {
        // Exact restore: a fresh copy of the backup replaces the deploy path as a whole (never
        // `cp -r bak live`, which nests the copy when live exists). Staging files vanish with it.
        Step s(*this, "RESTORE", report_.backup_path);
        const std::string cmd = "d=" + d_ + "; b=" + shell_quote(report_.backup_path) +
                                "; t=\"$d.guardia-restore\"; [ -d \"$b\" ] || { echo \"backup $b missing\" >&2; exit 30; }"
                                "; rm -rf -- \"$t\" && cp -a -- \"$b\" \"$t\" && rm -rf -- \"$d\" && mv -- \"$t\" \"$d\"";
        auto r = co_await run("RESTORE", cmd, settings_.backup_timeout, true);
        if (!r) {
            s.failed(r.error());
            step.failed(r.error());
            co_return r.error();
        }
        staged_.clear();
        s.ok();
    }
    if (node_.requires_restart) {
        Step s(*this, "ROLLBACK_STARTUP", node_.startup_cmd);
        auto r = co_await run("ROLLBACK_STARTUP", node_.startup_cmd, settings_.startup_timeout, true);
        if (!r) {
            s.failed(r.error());
            step.failed(r.error());
            co_return r.error();
        }
        s.ok({}, r->exit_code);
    }
    if (auto h = co_await health("ROLLBACK_HEALTH"); !h) {
        step.failed(h.error());
        co_return h.error();
    }
    std::string detail = "restored from " + report_.backup_path;
    for (const auto& n : notes) detail += "; " + n;
    step.ok(detail);
    co_return Result<void>{};
}

asio::awaitable<void> Pipeline::unlock() {
    if (stage_ == Stage::nothing) co_return;
    if (!co_await ensure_session("release the lock")) {
        audit("UNLOCK", "STEP_FAILED", std::nullopt, std::nullopt,
              "cannot reach the node: " + lock_path_ + " is left behind");
        co_return;
    }
    Step step(*this, "UNLOCK", lock_path_);
    // Only our own lock goes: the owner file must name this rollout.
    const std::string cmd = "l=" + shell_quote(lock_path_) + "; if grep -qxF -- " +
                            shell_quote("rollout=" + settings_.rollout_id) +
                            " \"$l/owner\" 2>/dev/null; then rm -rf -- \"$l\" && echo RELEASED; "
                            "else echo NOT_OURS; fi";
    auto r = co_await run("UNLOCK", cmd, settings_.command_timeout, true);
    if (r && r->out.rfind("RELEASED", 0) == 0) {
        report_.lock_released = true;
        step.ok();
    } else if (r) {
        step.ok("no lock of this rollout to release");
    } else {
        step.failed(r.error());
    }
}

asio::awaitable<NodeReport> Pipeline::run() {
    const auto started = Clock::now();
    std::string failed_step;
    Result<void> outcome = validate();
    if (!outcome) failed_step = "VALIDATE";
    if (failed_step.empty()) {
        outcome = co_await connect();
        if (!outcome) failed_step = "CONNECT";
    }
    auto next = [&](const char* name, Result<void> r) {
        if (!r && failed_step.empty()) {
            failed_step = name;
            outcome = std::move(r);
        }
    };
    if (failed_step.empty()) next("PRECHECK", co_await precheck());
    if (failed_step.empty()) next("LOCK", co_await lock());
    if (failed_step.empty()) next("BACKUP", co_await backup());
    if (failed_step.empty()) next("TRANSFER", co_await transfer());
    if (failed_step.empty()) next("RESTART", co_await restart());
    if (failed_step.empty()) next("HEALTH", co_await health("HEALTH"));

    if (failed_step.empty()) {
        report_.outcome = NodeOutcome::deployed;
        audit("SUMMARY", "DEPLOY_SUCCESS", std::nullopt, ms(Clock::now() - started), "");
    } else {
        report_.failed_step = failed_step;
        report_.error = outcome.error();
        audit("SUMMARY", "DEPLOY_FAILED", std::nullopt, ms(Clock::now() - started),
              report_.error.message);
        if (stage_ == Stage::live_changed) {
            auto rb = co_await rollback();
            if (rb) {
                report_.outcome = NodeOutcome::rolled_back;
                audit("SUMMARY", "ROLLBACK_OK", std::nullopt, ms(Clock::now() - started), report_.backup_path);
            } else {
                report_.outcome = NodeOutcome::rollback_failed;
                report_.rollback_error = rb.error().message;
                audit("SUMMARY", "ROLLBACK_FAILED", std::nullopt, ms(Clock::now() - started),
                      rb.error().message);
            }
        } else {
            // Nothing live changed: only our staging files may need to go.
            if (stage_ == Stage::staged || (stage_ == Stage::backed_up && failed_step == "TRANSFER"))
                co_await discard_staged();
            report_.outcome = NodeOutcome::failed_unchanged;
        }
    }
    co_await unlock();
    if (session_ && session_->usable()) co_await session_->disconnect();
    report_.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
    co_return report_;
}

}  // namespace

asio::awaitable<NodeReport> deploy_node(const Node& node, const std::vector<ArtifactSpec>& artifacts,
                                        const PipelineSettings& settings) {
    Pipeline pipeline(node, artifacts, settings);
    co_return co_await pipeline.run();
}

}  // namespace guardia::deploy
