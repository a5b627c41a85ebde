#include "guardia/deploy/node_pipeline.hpp"

#include "guardia/core/digest.hpp"
#include "guardia/core/failpoint.hpp"
#include "guardia/core/sanitizer.hpp"
#include "guardia/core/shell.hpp"
#include "guardia/deploy/activation.hpp"
#include "guardia/deploy/credential_store.hpp"
#include "guardia/deploy/owner.hpp"
#include "guardia/deploy/release_marker.hpp"
#include "guardia/http/health_probe.hpp"
#include "guardia/ssh/session.hpp"
#include "guardia/store/audit_writer.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>
#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/system/system_error.hpp>

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
        case NodeOutcome::deployed:
            return "DEPLOYED";
        case NodeOutcome::failed_unchanged:
            return "FAILED_UNCHANGED";
        case NodeOutcome::rolled_back:
            return "ROLLED_BACK";
        case NodeOutcome::rollback_failed:
            return "ROLLBACK_FAILED";
    }
    return "UNKNOWN";
}

Result<ArtifactSpec> describe_artifact(const std::string& path,
                                       std::uint64_t keep_in_memory_up_to) {
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
            return Error(errc::local_io_failed,
                         "reading artifact " + path + ": " + std::strerror(e));
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

// The client's epoch seconds, as the literal the lock's owner file records ("since"): the node
// runs no `date` for it.
std::string epoch_now() { return std::to_string(static_cast<long long>(std::time(nullptr))); }

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

// A backup's name after "<deploy path>.bak_", as a shell pattern (utc_stamp()'s format).
constexpr const char* kBackupStamp =
    "[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]_[0-9][0-9][0-9][0-9][0-9][0-9]";

// An artifact lands as exactly one entry of the deploy path: its name is never empty, ".",
// "..", never holds a '/' (it would land elsewhere) nor a NUL, CR or LF (remote output is read
// line by line). Anything else (spaces, quotes, '$') is fine: every command quotes it.
std::optional<std::string> artifact_name_problem(const std::string& name) {
    if (name.empty()) return "is empty";
    if (name == "." || name == "..") return "is not a file name";
    if (name.find('/') != std::string::npos) return "must not contain '/'";
    if (name.find_first_of(std::string_view("\0\r\n", 3)) != std::string::npos)
        return "must not contain NUL, CR or LF";
    if (name.size() > 255) return "is longer than 255 bytes";
    return std::nullopt;
}

// Where the pipeline has got to: it decides what a failure must undo. `lock_unknown`: the LOCK
// command was sent but its answer was lost (deadline, connection), so we may hold the lock.
enum class Stage { nothing, lock_unknown, locked, backed_up, staged, live_changed };

// How far a sequence of steps got: the first failure wins, later steps are skipped.
struct StepChain {
    std::string failed_step;
    Result<void> outcome;
    bool ok() const { return failed_step.empty(); }
    void note(const std::string& step, Result<void> r) {
        if (!r && ok()) {
            failed_step = step;
            outcome = std::move(r);
        }
    }
};

// Shell text (appended after `d=<deploy path>`) that prints "SHA <name> <sha256>" for each
// artifact present in the deploy path. The name is quoted like every value (never spliced into
// double quotes, where a `$(...)` in it would run) and printed with printf; the file is hashed
// from stdin, so sha256sum never escapes an odd name in its output.
std::string live_sums_script(const std::vector<ArtifactSpec>& artifacts) {
    std::string sums;
    for (const auto& a : artifacts)
        if (!a.file_name.empty())
            sums += "; n=" + shell_quote(a.file_name) +
                    "; f=\"$d/$n\"; [ -f \"$f\" ] && sha256sum < \"$f\" | { read -r h x; "
                    "printf 'SHA %s %s\\n' \"$n\" \"$h\"; }";
    return sums;
}

}  // namespace

bool step_runs_without_audit(std::string_view step) noexcept {
    for (std::string_view safety : {"ROLLBACK", "ROLLBACK_SHUTDOWN", "RESTORE", "ROLLBACK_STARTUP",
                                    "ROLLBACK_HEALTH", "DISCARD_STAGED", "UNLOCK"})
        if (step == safety) return true;
    return false;
}

bool lock_owned_by(std::string_view owner_file, std::string_view rollout_id) {
    if (rollout_id.empty()) return false;
    // As the shell's `while IFS= read -r x` reads it: only lines ended by a newline count.
    for (std::size_t pos = 0;;) {
        const auto nl = owner_file.find('\n', pos);
        if (nl == std::string_view::npos) return false;
        const auto line = owner_file.substr(pos, nl - pos);
        if (line.size() == rollout_id.size() + 8 && line.substr(0, 8) == "rollout=" &&
            line.substr(8) == rollout_id)
            return true;
        pos = nl + 1;
    }
}

std::vector<std::string> live_mismatches(std::string_view out,
                                         const std::vector<ArtifactSpec>& artifacts) {
    std::vector<std::string> wrong;
    for (const auto& a : artifacts) {
        if (a.file_name.empty()) continue;
        const std::string prefix = "SHA " + a.file_name + " ";
        std::string live;
        for (std::size_t pos = 0; pos < out.size();) {
            auto end = out.find('\n', pos);
            if (end == std::string_view::npos) end = out.size();
            const auto line = out.substr(pos, end - pos);
            if (line.substr(0, prefix.size()) == prefix) live = std::string(line.substr(prefix.size()));
            pos = end + 1;
        }
        if (live == a.sha256) continue;
        wrong.push_back(a.file_name + " is " + (live.empty() ? std::string("missing") : "sha256 " + live) +
                        " (expected " + a.sha256 + ")");
    }
    return wrong;
}

namespace {

// How long a safety step waits for its intent row before it goes on regardless (a commit
// takes milliseconds; a store that hangs, e.g. on a dying disk, must not hold a half-changed
// node down).
constexpr std::chrono::milliseconds kSafetyIntentWait{2000};

// Completes `done` (cancels the timer) once the writer committed what was queued before.
asio::awaitable<void> cancel_when_durable(store::AuditWriter* audit,
                                          std::shared_ptr<asio::steady_timer> done) {
    (void)co_await audit->durable();
    done->cancel();
}

class Pipeline {
  public:
    Pipeline(const Node& node, const std::vector<ArtifactSpec>& artifacts,
             const PipelineSettings& settings)
        : node_(node), artifacts_(artifacts), settings_(settings) {
        report_.node = node.name;
        d_ = shell_quote(node.deploy_path);
        lock_path_ = node.deploy_path + ".lock";
        marker_path_ = node.deploy_path + std::string(kReleaseMarkerSuffix);
    }

    asio::awaitable<NodeReport> run();
    asio::awaitable<NodeReport> run_precheck();
    asio::awaitable<NodeReport> run_rollback(const std::string& backup_path,
                                             const std::vector<ArtifactSpec>& expected_live);
    MarkerExpectation expect_marker;  // rollback_release(): what the marker must name
    asio::awaitable<NodeReport> run_recover(const std::string& known_backup_path);

  private:
    // --- audit ----------------------------------------------------------------------------
    void audit(const std::string& step, const std::string& event, std::optional<int> exit_code,
               std::optional<std::int64_t> duration_ms, std::string detail) {
        if (deferring_audit_) {
            DeferredRow row;
            row.step = step;
            row.event = event;
            row.exit_code = exit_code;
            row.duration_ms = duration_ms;
            row.detail = std::move(detail);
            deferred_rows_.push_back(std::move(row));
            return;
        }
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
            p.current_step_ = name;
            if (p.settings_.on_step) p.settings_.on_step(p.node_.name, name);
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
                p.audit(name, "STEP_FAILED", std::nullopt, ms(Clock::now() - started),
                        "interrupted");
        }
    };

    Error node_error(boost::system::error_code kind, const std::string& step,
                     const std::string& what) const {
        return Error(kind, "node '" + node_.name + "': " + step + ": " + what);
    }
    Error node_error(errc kind, const std::string& step, const std::string& what) const {
        return node_error(make_error_code(kind), step, what);
    }

    // Operator text (shutdown_cmd, startup_cmd: anything that came from the inventory, the
    // configuration or the API) is judged by the sanitizer each time it is about to be sent,
    // whatever validate() said before: a refusal sends nothing.
    Result<void> judge(const std::string& step, const std::string& operator_text) {
        if (auto ok = sanitize_command(operator_text); !ok) {
            audit(step, "SECURITY_VIOLATION", std::nullopt, std::nullopt, ok.error().message);
            return node_error(errc::security_violation, step,
                              ok.error().message + " (command not sent)");
        }
        return {};
    }

    // An operator's command, alone: judged by the sanitizer, then run.
    asio::awaitable<Result<ssh::ExecResult>> run_operator(const std::string& step,
                                                          const std::string& operator_text,
                                                          milliseconds timeout, bool checked) {
        if (auto ok = judge(step, operator_text); !ok) co_return ok.error();
        co_return co_await run_script(step, operator_text, timeout, checked);
    }

    // Guardia's own scripts (lock, backup, prune, activate, restore, unlock, recovery, clean-up)
    // are NOT passed to the sanitizer. They are this file's code, not operator input: every
    // value inserted into them is shell_quote()d, and those values (deploy path, artifact
    // names, rollout id, owner) are validated at inventory load / in validate(). They need
    // shell variables and globs in the operands of rm -rf and mv, which a fail-closed sanitizer
    // rightly refuses in operator text; judging them would block Guardia's own safety steps
    // (a rollback refused by the sanitizer restores nothing) or a deploy path merely containing
    // one of its words. A script that embeds operator text must judge() that text first.
    //
    // Every remote command passes here: its step's intent row is committed first (write-ahead,
    // see intent_committed), and the crash tests' failpoints sit right before the command is
    // sent and right after the node answered. `also`: the other steps one composed command
    // carries (PRECHECK with LOCK and BACKUP, ACTIVATE with STARTUP): their points coincide.
    asio::awaitable<Result<ssh::ExecResult>> run_script(
        const std::string& step, const std::string& command, milliseconds timeout, bool checked,
        std::string_view also = {}, std::string_view also2 = {}) {
        if (auto ok = co_await intent_committed(step); !ok) co_return ok.error();
        failpoints(failpoint::When::before, step, also, also2);
        ssh::ExecOptions eo;
        eo.timeout = timeout;
        // Plain if/else: GCC 12 mishandles co_await inside a conditional expression.
        Result<ssh::ExecResult> r = Error(errc::invalid_argument, "not run");
        if (checked)
            r = co_await session_->exec_checked(command, eo);
        else
            r = co_await session_->exec(command, eo);
        failpoints(failpoint::When::after, step, also, also2);
        if (!r)
            co_return Error(r.error().code,
                            "node '" + node_.name + "': " + step + ": " + r.error().message);
        co_return r;
    }

    void failpoints(failpoint::When when, std::string_view step, std::string_view also = {},
                    std::string_view also2 = {}) const {
        if constexpr (failpoint::enabled) {
            for (auto name : {step, also, also2})
                if (!name.empty()) failpoint::hit(when, name, node_.name);
        }
    }

    // Write-ahead, the audit log's promise: a forward step's intent row (its STEP_START) is
    // committed before anything of the step reaches the node. A store that cannot commit stops
    // the node right there (errc::audit_unavailable) and it is cleaned up as after any failure.
    // Safety steps (step_runs_without_audit) run whatever the store says: a node left
    // half-changed to keep the log complete would be the worse failure. Their rows stay
    // queued: written when the store recovers, or spilled to the journal at exit.
    asio::awaitable<Result<void>> intent_committed(const std::string& step) {
        if (settings_.audit == nullptr) co_return Result<void>{};
        if (step_runs_without_audit(step)) {
            // Waits a little for the intent (normally committed in milliseconds), never for a
            // failing or hanging store: the barrier runs on its own, the step does not wait
            // past kSafetyIntentWait.
            if (settings_.audit->degraded()) co_return Result<void>{};
            auto ex = co_await asio::this_coro::executor;
            auto done = std::make_shared<asio::steady_timer>(ex, kSafetyIntentWait);
            asio::co_spawn(ex, cancel_when_durable(settings_.audit, done), asio::detached);
            boost::system::error_code ec;
            co_await done->async_wait(asio::redirect_error(asio::use_awaitable, ec));
            co_return Result<void>{};
        }
        auto d = co_await settings_.audit->durable();
        // A writer that is not degraded committed: the error was an item SQLite refused for
        // its content (another node's, maybe), not a store that cannot record this step.
        if (d || !settings_.audit->degraded()) co_return Result<void>{};
        co_return node_error(errc::audit_unavailable, step,
                             "the audit log cannot be written (" + d.error().message +
                                 "): the step was not started");
    }

    Result<void> validate(bool names_shipped);
    asio::awaitable<void> cleanup_after_failure(Clock::time_point started);
    asio::awaitable<Result<void>> probe_lock();
    asio::awaitable<Result<void>> connect();
    asio::awaitable<Result<void>> precheck();
    asio::awaitable<Result<void>> prepare();
    std::string precheck_script() const;
    Error lock_busy_error(const std::string& out) const;
    void note_busy_lock(const std::string& out) {
        std::istringstream lines(out);
        for (std::string line; std::getline(lines, line);) {
            if (line.rfind("owner=", 0) == 0) report_.busy_lock_owner = line.substr(6);
            if (line.rfind("rollout=", 0) == 0) report_.busy_lock_rollout = line.substr(8);
        }
    }
    asio::awaitable<Result<void>> lock();
    asio::awaitable<Result<void>> transfer();
    asio::awaitable<Result<void>> activate_release();
    asio::awaitable<Result<bool>> unlock_over_sftp();
    void end_pending_transfers(const std::string& why, std::optional<int> exit_code);
    // The activation command: like run_script (intent committed, failpoints of the steps it
    // carries), with the caller's options (its progress markers followed as they arrive).
    // Errors are returned as the SSH layer gave them, without the node and step prefix.
    asio::awaitable<Result<ssh::ExecResult>> run_activation(const std::string& step,
                                                            const std::string& command,
                                                            const ssh::ExecOptions& eo, bool restart) {
        if (auto ok = co_await intent_committed(step); !ok) co_return ok.error();
        const std::string_view also = restart ? "ACTIVATE" : "", also2 = restart ? "STARTUP" : "";
        failpoints(failpoint::When::before, step, also, also2);
        auto r = co_await session_->exec(command, eo);
        failpoints(failpoint::When::after, step, also, also2);
        co_return r;
    }
    asio::awaitable<Result<void>> health(const std::string& step);
    asio::awaitable<http::Attempt> command_attempt(const std::string& step,
                                                   milliseconds limit);
    asio::awaitable<Result<void>> rollback();
    asio::awaitable<Result<void>> verify_live(const std::vector<ArtifactSpec>& expected);
    std::string marker_write_script() const;
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
    std::string marker_path_;  // <deploy path>.guardia-release: which release runs here
    std::vector<std::string> staged_;  // staging paths, parallel to artifacts_
    std::string current_step_;         // the step started last: where a cancellation struck
    std::string prepare_failed_step_;  // which of PRECHECK / LOCK / BACKUP prepare() failed in
    std::string activation_failed_step_;  // TRANSFER (verification) or RESTART
    // Uploaded, to be verified by the activation command, which ends their TRANSFER steps.
    struct PendingTransfer {
        PendingTransfer() {}
        std::string file_name;
        std::int64_t upload_ms = 0;
    };
    std::vector<PendingTransfer> pending_transfers_;
    // While the activation command runs, the rows its markers produce are held (with the
    // durations measured as each marker arrived) and written once its answer is in: like every
    // remote command's, its steps' rows follow the node's answer (the crash tests' "after"
    // points sit between the two).
    struct DeferredRow {
        DeferredRow() {}
        std::string step, event, detail;
        std::optional<int> exit_code;
        std::optional<std::int64_t> duration_ms;
    };
    bool deferring_audit_ = false;
    std::vector<DeferredRow> deferred_rows_;
    void write_deferred_rows() {
        deferring_audit_ = false;
        auto rows = std::move(deferred_rows_);
        deferred_rows_.clear();
        for (auto& r : rows) audit(r.step, r.event, r.exit_code, r.duration_ms, std::move(r.detail));
    }

    // Asio throws at the next co_await once the node was cancelled: the step in progress is
    // where the node stopped.
    void note_cancelled(StepChain& chain) const {
        chain.failed_step = current_step_.empty() ? "CONNECT" : current_step_;
        chain.outcome = node_error(errc::cancelled, chain.failed_step,
                                   "cancelled (rollout stopped or node deadline)");
    }
};

// The node's own commands are checked before anything at all is sent to it, and so are the
// names the artifacts get in the deploy path (`names_shipped`: not for a rollback, which
// ships nothing).
Result<void> Pipeline::validate(bool names_shipped) {
    Step step(*this, "VALIDATE");
    for (const auto* field : {&node_.shutdown_cmd, &node_.startup_cmd, &node_.health.command}) {
        if (field->empty()) continue;
        if (auto ok = sanitize_command(*field); !ok) {
            const char* name = field == &node_.shutdown_cmd  ? "shutdown_cmd"
                               : field == &node_.startup_cmd ? "startup_cmd"
                                                             : "health.command";
            audit("VALIDATE", "SECURITY_VIOLATION", std::nullopt, std::nullopt,
                  std::string(name) + ": " + ok.error().message);
            Error e =
                node_error(errc::security_violation, "VALIDATE",
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
    if (names_shipped) {
        for (const auto& a : artifacts_) {
            if (auto problem = artifact_name_problem(a.file_name)) {
                Error e = node_error(errc::invalid_argument, "VALIDATE",
                                     "artifact name '" + a.file_name + "' " + *problem +
                                         " (nothing was sent)");
                step.failed(e);
                return e;
            }
        }
    }
    step.ok();
    return {};
}

asio::awaitable<Result<void>> Pipeline::connect() {
    Step step(*this, "CONNECT",
              node_.user + "@" + node_.host + ":" + std::to_string(node_.ssh_port));
    auto o =
        settings_.credentials
            ? settings_.credentials->connect_options(node_, settings_.known_hosts,
                                                     settings_.host_key_policy,
                                                     settings_.connect_timeout, settings_.logger)
            : Result<ssh::ConnectOptions>(Error(errc::invalid_argument, "no credential store"));
    if (!o) {
        Error e = node_error(o.error().code, "CONNECT", o.error().message);
        step.failed(e);
        co_return e;
    }
    if (auto ok = co_await intent_committed("CONNECT"); !ok) {
        step.failed(ok.error());
        co_return ok.error();
    }
    auto ex = co_await asio::this_coro::executor;
    auto s = co_await ssh::Session::connect(ex, std::move(*o));
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
    const std::string cmd = precheck_script() + "; echo \"$u\"";
    auto r = co_await run_script("PRECHECK", cmd, settings_.command_timeout, true);
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
        Error e =
            node_error(errc::precheck_failed, "PRECHECK",
                       "disk usage " + std::to_string(usage) + " % of the filesystem holding " +
                           node_.deploy_path + " is above the threshold of " +
                           std::to_string(settings_.disk_threshold_percent) + " %");
        step.failed(e);
        co_return e;
    }
    step.ok("disk usage " + std::to_string(usage) + " %");
    co_return Result<void>{};
}

// The read-only checks, as a script that leaves the disk usage in $u: the deploy path is a
// directory, backups can be made beside it (and, for a deploy path that is a symbolic link,
// the restore's copy beside the real directory), the node's scripts exist, and no artifact
// would land on a directory (a rename onto one fails, or with a plain `mv` nests inside it).
// Only shell built-ins besides df (and a subshell for a linked deploy path): every process
// started costs the node a fork and exec.
std::string Pipeline::precheck_script() const {
    std::string scripts, names;
    // `+= ' '` then `+= quoted`, not `+= " " + quoted`: GCC 12 at -O3 raises a false
    // -Werror=restrict on "literal" + std::string&& (GCC bug 105329).
    if (node_.requires_restart)
        for (const auto* cmd : {&node_.shutdown_cmd, &node_.startup_cmd})
            for (const auto& path : paths_in(*cmd)) {
                scripts += ' ';
                scripts += shell_quote(path);
            }
    for (const auto& a : artifacts_)
        if (!a.file_name.empty()) {
            names += ' ';
            names += shell_quote(a.file_name);
        }
    return "LC_ALL=C; d=" + d_ +
           "; [ -d \"$d\" ] || { echo \"deploy path $d does not exist or is not a directory\" >&2; "
           "exit 10; }"
           "; p=${d%/*}; [ -n \"$p\" ] || p=/"
           "; [ -w \"$p\" ] || { echo \"backup location $p is not writable\" >&2; exit 11; }"
           "; if [ -h \"$d\" ]; then r=$(cd -P -- \"$d\" && pwd -P) || { echo \"deploy path $d "
           "is a link that cannot be resolved\" >&2; exit 10; }; q=${r%/*}; [ -n \"$q\" ] || q=/"
           "; [ -w \"$q\" ] || { echo \"deploy path $d is a link to $r, whose parent $q is not "
           "writable (a restore replaces $r from there)\" >&2; exit 11; }; fi"
           "; for s in" +
           (scripts.empty() ? std::string(" ''") : scripts) +
           "; do [ -z \"$s\" ] || [ -e \"$s\" ] || { echo \"script $s not found\" >&2; exit 12; }; "
           "done"
           "; for a in" +
           (names.empty() ? std::string(" ''") : names) +
           "; do [ -z \"$a\" ] || [ -h \"$d/$a\" ] || [ ! -d \"$d/$a\" ] || { echo \"$d/$a is a "
           "directory: the artifact $a would not replace it\" >&2; exit 12; }; done"
           "; u=; o=$(df -P -- \"$d\") && { set -f; set -- $o; set +f; [ $# -lt 12 ] || u=${12%\\%}; }";
}

Error Pipeline::lock_busy_error(const std::string& out) const {
    // Held by someone else. Say by whom and for how long; a stale lock is reported, not stolen.
    std::string owner, rollout;
    long since = 0, now = 0;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
        auto eq = line.find('=');
        if (eq == std::string::npos) continue;
        auto key = line.substr(0, eq), value = line.substr(eq + 1);
        if (key == "owner")
            owner = value;
        else if (key == "rollout")
            rollout = value;
        else if (key == "since")
            since = std::atol(value.c_str());
        else if (key == "now")
            now = std::atol(value.c_str());
    }
    if (now == 0) now = static_cast<long>(std::time(nullptr));  // the lock's age by our clock
    const long age = since > 0 && now >= since ? now - since : -1;
    std::string what = "node is locked by another rollout (" + lock_path_ + ": owner " +
                       (owner.empty() ? "unknown" : owner) + ", rollout " +
                       (rollout.empty() ? "unknown" : rollout) +
                       (age >= 0 ? ", held for " + std::to_string(age) + " s" : std::string()) +
                       ")";
    if (age > settings_.stale_lock_age.count())
        what += "; the lock is STALE (older than " +
                std::to_string(settings_.stale_lock_age.count()) +
                " s): check that its owner is gone, then remove " + lock_path_ + " by hand";
    return node_error(errc::node_locked, "LOCK", what);
}

// PRECHECK, LOCK and BACKUP as ONE remote command (one channel, one shell, one round trip
// instead of three): the lock is taken only if the checks pass, the backup only under the
// lock. Markers on stdout and distinct exit codes say how far it got; each step is still
// audited on its own. The command's duration is given on the last step it reached.
asio::awaitable<Result<void>> Pipeline::prepare() {
    const std::string want = node_.deploy_path + ".bak_" + utc_stamp();
    const auto started = Clock::now();
    if (settings_.on_step) settings_.on_step(node_.name, "PRECHECK");
    current_step_ = "PRECHECK";
    audit("PRECHECK", "STEP_START", std::nullopt, std::nullopt,
          "with LOCK and BACKUP in one remote command");
    const std::string cmd =
        precheck_script() + "; echo \"USAGE=$u\"; case \"$u\" in ''|*[!0-9]*) exit 13;; esac" +
        "; [ \"$u\" -le " + std::to_string(settings_.disk_threshold_percent) + " ] || exit 14" +
        "; l=" + shell_quote(lock_path_) +
        "; if mkdir -- \"$l\" 2>/dev/null; then printf 'owner=%s\\nrollout=%s\\nsince=%s\\n' " +
        shell_quote(settings_.owner) + " " + shell_quote(settings_.rollout_id) + " " + epoch_now() +
        " > \"$l/owner\" || { rm -rf -- \"$l\"; exit 16; }"
        "; else echo BUSY; cat -- \"$l/owner\" 2>/dev/null; exit 15; fi"
        "; echo LOCKED"
        // Staging files a cut connection left behind in an earlier run go, under the lock.
        "; for f in \"$d\"/.guardia-stage.*; do [ -e \"$f\" ] && rm -f -- \"$d\"/.guardia-stage.*; "
        "break; done"
        // The backup is a copy of the real directory: a deploy path that is a symbolic link
        // (Capistrano's current -> releases/...) is resolved first, else `cp -a` would copy the
        // link and the "backup" would be the live files themselves. The first free
        // name is taken (two runs in one second: the second gets a suffix; the lock makes the
        // test and the copy one step, with shell built-ins only), then cp -a -T creates it
        // with the directory's contents and gives it the directory's mode, owner and times; -T
        // never nests the copy inside an existing directory. A failed copy is removed.
        "; if [ -h \"$d\" ]; then r=$(cd -P -- \"$d\" && pwd -P) || exit 20; else r=$d; fi"
        "; b=" +
        shell_quote(want) +
        "; n=2; c=\"$b\"; while [ -e \"$c\" ] || [ -h \"$c\" ]; do c=\"${b}_$n\"; n=$((n+1)); done"
        "; cp -a -T -- \"$r\" \"$c\" || { rm -rf -- \"$c\"; exit 20; }"
        // The release marker goes with the backup, beside it as <backup>.guardia-release (a
        // copy, or an empty file: there was none), so that a restore from it puts back the
        // marker of the files it restores.
        "; m=" +
        shell_quote(marker_path_) +
        "; if [ -f \"$m\" ]; then cp -- \"$m\" \"$c.guardia-release\"; else : > \"$c.guardia-release\"; fi "
        "|| { rm -rf -- \"$c\" \"$c.guardia-release\"; exit 20; }"
        // The lock names its backup: a restarted service restores the node from it even if
        // the store never heard of the backup (its write was lost with the process).
        "; printf 'backup=%s\\n' \"$c\" >> \"$l/owner\" || true"
        // Retention: only Guardia's own backups count and go, i.e. real directories (never a
        // link) named exactly <deploy path>.bak_YYYYMMDD_HHMMSS or ..._HHMMSS_N. A user's
        // "app.bak_important" or "app.bak_20200101_000000.keep" beside it is not ours to
        // delete. The glob sorts them oldest first; the backup just taken is never removed.
        "; g() { [ -d \"$1\" ] && [ ! -h \"$1\" ] || return 1; case ${1#\"$d\".bak_} in " +
        std::string(kBackupStamp) + ") return 0;; " + kBackupStamp +
        "_[1-9]*) case ${1#\"$d\".bak_????????_??????_} in *[!0-9]*) return 1;; esac; return 0;; "
        "esac; return 1; }"
        "; k=0; for x in \"$d\".bak_*; do g \"$x\" && k=$((k+1)); done"
        "; for x in \"$d\".bak_*; do [ \"$k\" -gt " +
        std::to_string(std::max(1, settings_.keep_backups)) +
        " ] || break; [ \"$x\" != \"$c\" ] && g \"$x\" || continue; rm -rf -- \"$x\" \"$x.guardia-release\"; "
        "k=$((k-1)); "
        "done; echo \"BACKUP=$c\"";
    auto r =
        co_await run_script("PRECHECK", cmd, settings_.command_timeout + settings_.backup_timeout,
                            false, "LOCK", "BACKUP");
    const auto took = ms(Clock::now() - started);
    auto fail = [&](const std::string& step, Error e, std::optional<int> code) {
        prepare_failed_step_ = step;
        audit(step, "STEP_FAILED", code, took, e.message);
        return e;
    };
    auto ok = [&](const std::string& step, std::string detail, bool last) {
        if (step != "PRECHECK") {
            current_step_ = step;
            if (settings_.on_step) settings_.on_step(node_.name, step);
            audit(step, "STEP_START", std::nullopt, std::nullopt,
                  step == "LOCK" ? lock_path_ : want);
        }
        audit(step, "STEP_OK", std::nullopt,
              last ? std::optional<std::int64_t>(took) : std::nullopt, std::move(detail));
    };
    auto started_step = [&](const std::string& step) {
        current_step_ = step;
        if (settings_.on_step) settings_.on_step(node_.name, step);
        audit(step, "STEP_START", std::nullopt, std::nullopt, step == "LOCK" ? lock_path_ : want);
    };
    if (!r) {
        // Lost on the way (deadline, connection): the lock may have been taken. unlock()
        // removes it if, and only if, it is ours. Nothing live has changed.
        if (r.error().code != errc::security_violation) stage_ = Stage::lock_unknown;
        co_return fail("PRECHECK", r.error(), std::nullopt);
    }
    const std::string& out = r->out;
    auto value_of = [&](const std::string& key) -> std::optional<std::string> {
        const std::string k = key + "=";
        std::size_t pos = out.rfind("\n" + k);
        if (pos != std::string::npos)
            ++pos;
        else if (out.rfind(k, 0) == 0)
            pos = 0;
        else
            return std::nullopt;
        const auto end = out.find('\n', pos);
        return out.substr(pos + k.size(),
                          end == std::string::npos ? std::string::npos : end - pos - k.size());
    };
    const auto usage = value_of("USAGE");
    const bool locked = out.find("LOCKED\n") != std::string::npos;
    const int code = r->exit_signal.empty() ? r->exit_code : -1;
    const std::string tail = trim(r->err_tail());
    if (code == 0 && locked) {
        stage_ = Stage::backed_up;
        report_.backup_path = value_of("BACKUP").value_or("");
        if (settings_.on_backup && !report_.backup_path.empty())
            settings_.on_backup(node_.name, report_.backup_path);
        ok("PRECHECK", "disk usage " + usage.value_or("?") + " %", false);
        ok("LOCK", {}, false);
        ok("BACKUP", report_.backup_path, true);
        co_return Result<void>{};
    }
    if (code >= 10 && code <= 12)
        co_return fail("PRECHECK", node_error(errc::precheck_failed, "PRECHECK", tail), code);
    if (code == 13)
        co_return fail(
            "PRECHECK",
            node_error(errc::remote_command_failed, "PRECHECK",
                       "cannot read disk usage from df -P: '" + usage.value_or("") + "'"),
            code);
    if (code == 14)
        co_return fail(
            "PRECHECK",
            node_error(errc::precheck_failed, "PRECHECK",
                       "disk usage " + usage.value_or("?") + " % of the filesystem holding " +
                           node_.deploy_path + " is above the threshold of " +
                           std::to_string(settings_.disk_threshold_percent) + " %"),
            code);
    ok("PRECHECK", "disk usage " + usage.value_or("?") + " %", false);
    if (code == 15) {
        note_busy_lock(out);
        started_step("LOCK");
        co_return fail("LOCK", lock_busy_error(out), code);
    }
    if (!locked) {
        // 16 (the owner file could not be written; the lock was removed again) or an
        // unexpected end between the checks and the lock.
        if (code != 16) stage_ = Stage::lock_unknown;
        started_step("LOCK");
        co_return fail(
            "LOCK",
            node_error(errc::remote_command_failed, "LOCK",
                       "taking the lock failed (exit " + std::to_string(code) + "): " + tail),
            code);
    }
    stage_ = Stage::locked;
    ok("LOCK", {}, false);
    started_step("BACKUP");
    co_return fail(
        "BACKUP",
        node_error(errc::remote_command_failed, "BACKUP",
                   "backup to " + want + " failed (exit " + std::to_string(code) + "): " + tail),
        code);
}

// Before a rollback that undoes one release (a PM's rejection): the node must still run that
// release, else the rollback would overwrite whatever replaced it (another SR's build, a hand
// fix). Read-only; a mismatch fails the step and nothing is touched.
asio::awaitable<Result<void>> Pipeline::verify_live(const std::vector<ArtifactSpec>& expected) {
    Step step(*this, "VERIFY_LIVE");
    // Also read-only: whether the backup to restore from still exists (a rollback without it
    // would stop the service and then fail), and the release marker's one line.
    const std::string cmd = "d=" + d_ + live_sums_script(expected) +
                            "; b=" + shell_quote(report_.backup_path) +
                            "; { [ -d \"$b\" ] && [ ! -h \"$b\" ]; } || echo NOBACKUP"
                            "; " + marker_line_script(node_.deploy_path) + "; true";
    auto r = co_await run_script("VERIFY_LIVE", cmd, settings_.command_timeout, true);
    if (!r) {
        step.failed(r.error());
        co_return r.error();
    }
    auto wrong = live_mismatches(r->out, expected);
    const std::string out = "\n" + r->out;  // every line starts after a newline
    if (out.find("\nNOBACKUP\n") != std::string::npos)
        wrong.push_back("its backup " + report_.backup_path + " is gone");
    if (!expect_marker.rollout_id.empty() || !expect_marker.sr_id.empty()) {
        std::string line;
        if (auto pos = out.rfind("\nMARKER "); pos != std::string::npos) {
            const auto end = out.find('\n', pos + 1);
            line = out.substr(pos + 8, end == std::string::npos ? end : end - pos - 8);
        }
        auto marker = parse_marker(line);
        if (line.empty())
            wrong.push_back("no release marker " + marker_path_);
        else if (!marker)
            wrong.push_back(marker_path_ + ": " + marker.error().message);
        else if (!expect_marker.rollout_id.empty() && marker->rollout_id != expect_marker.rollout_id)
            wrong.push_back("its release marker names rollout " + marker->rollout_id);
        else if (!expect_marker.sr_id.empty() && marker->sr_id != expect_marker.sr_id)
            wrong.push_back("its release marker names SR " + marker->sr_id);
    }
    if (wrong.empty()) {
        step.ok("the release to undo is live", 0);
        co_return Result<void>{};
    }
    std::string what;
    for (const auto& w : wrong) what += (what.empty() ? "" : "; ") + w;
    auto e = node_error(errc::precheck_failed, "VERIFY_LIVE",
                        "no longer runs the release to roll back (" + what +
                            "): not overwritten");
    step.failed(e, 0);
    co_return e;
}

// The activation's last command: the release marker, written to a temporary file beside it and
// renamed over it.
std::string Pipeline::marker_write_script() const {
    ReleaseMarker marker;
    marker.rollout_id = settings_.rollout_id;
    marker.sr_id = settings_.sr_id;
    for (const auto& a : artifacts_) marker.artifacts.emplace_back(a.file_name, a.sha256);
    marker.activated_at = utc_iso8601(std::time(nullptr));
    marker.owner = settings_.owner;
    const std::string tmp = shell_quote(marker_path_ + ".tmp");
    return "printf '%s\\n' " + shell_quote(render_marker(marker)) + " > " + tmp +
           " && mv -f -T -- " + tmp + " " + shell_quote(marker_path_);
}

asio::awaitable<Result<void>> Pipeline::lock() {
    Step step(*this, "LOCK", lock_path_);
    // mkdir is atomic: exactly one rollout gets the lock. The owner file says who holds it.
    // Staging files a cut connection left behind in an earlier run are removed under the lock.
    const std::string cmd =
        "d=" + d_ + "; l=" + shell_quote(lock_path_) +
        "; if mkdir -- \"$l\" 2>/dev/null; then printf 'owner=%s\\nrollout=%s\\nsince=%s\\n' " +
        shell_quote(settings_.owner) + " " + shell_quote(settings_.rollout_id) + " " + epoch_now() +
        " > \"$l/owner\" && rm -f -- \"$d\"/.guardia-stage.* && echo LOCKED; " +
        (settings_.reclaim_own_lock
             ? "elif { o=; while IFS= read -r x; do [ \"$x\" = " +
                   shell_quote("rollout=" + settings_.rollout_id) +
                   " ] && o=1; done < \"$l/owner\"; [ -n \"$o\" ]; } 2>/dev/null; then "
                   "echo LOCKED reclaimed; "
             : std::string()) +
        "else echo BUSY; cat -- \"$l/owner\" 2>/dev/null; fi";
    auto r = co_await run_script("LOCK", cmd, settings_.command_timeout, true);
    if (!r) {
        // Unless it was refused before sending, the mkdir may have happened: unlock() will
        // remove the lock if (and only if) it is ours.
        if (r.error().code != errc::security_violation) stage_ = Stage::lock_unknown;
        step.failed(r.error());
        co_return r.error();
    }
    if (r->out.rfind("LOCKED", 0) == 0) {
        stage_ = Stage::locked;
        step.ok(r->out.rfind("LOCKED reclaimed", 0) == 0
                    ? "reclaimed the lock this rollout's previous process left"
                    : std::string());
        co_return Result<void>{};
    }
    note_busy_lock(r->out);
    Error e = lock_busy_error(r->out);
    step.failed(e);
    co_return e;
}

// Uploads each artifact to a staging name beside its final one. The upload is not verified
// here: the activation command (activate_release) hashes the staged files on the node first,
// before anything live changes, and only then ends each TRANSFER step (STEP_OK with the
// verified sha256). Each TRANSFER's intent row is thus also that command's intent row.
asio::awaitable<Result<void>> Pipeline::transfer() {
    for (const auto& a : artifacts_) {
        const std::string target = node_.deploy_path + "/" + a.file_name;
        current_step_ = "TRANSFER";
        if (settings_.on_step) settings_.on_step(node_.name, "TRANSFER");
        audit("TRANSFER", "STEP_START", std::nullopt, std::nullopt,
              a.file_name + " (" + std::to_string(a.size) + " bytes)");
        const auto started = Clock::now();
        auto fail = [&](Error e) {
            audit("TRANSFER", "STEP_FAILED", std::nullopt, ms(Clock::now() - started), e.message);
            end_pending_transfers("not verified: " + e.message, std::nullopt);
            return e;
        };
        ssh::UploadOptions uo;
        uo.mode = a.mode;
        uo.rename_into_place = false;   // activated after the service is stopped
        uo.expected_sha256 = a.sha256;  // hashed once for the whole rollout
        uo.verify_remotely = false;     // verified by the activation command
        uo.timeout = settings_.transfer_timeout;
        if constexpr (failpoint::enabled)
            uo.on_progress = [this](std::uint64_t acked, std::uint64_t total) {
                if (acked * 2 >= total) failpoint::hit(failpoint::When::mid, "TRANSFER", node_.name);
            };
        if (auto ok = co_await intent_committed("TRANSFER"); !ok) co_return fail(ok.error());
        failpoints(failpoint::When::before, "TRANSFER");
        // Plain if/else: GCC 12 mishandles co_await inside a conditional expression.
        Result<ssh::UploadResult> up = Error(errc::invalid_argument, "not run");
        if (a.bytes)
            up = co_await session_->upload(a.bytes, target, uo);  // the rollout's shared copy
        else
            up = co_await session_->upload(a.local_path, target, uo);
        failpoints(failpoint::When::after, "TRANSFER");
        if (!up)
            co_return fail(
                Error(up.error().code, "node '" + node_.name + "': TRANSFER: " + up.error().message));
        staged_.push_back(up->staging_path);
        stage_ = Stage::staged;
        PendingTransfer pending;
        pending.file_name = a.file_name;
        pending.upload_ms = ms(Clock::now() - started);
        pending_transfers_.push_back(std::move(pending));
    }
    co_return Result<void>{};
}

// TRANSFER steps whose upload is done but whose verification did not happen: each ends failed.
void Pipeline::end_pending_transfers(const std::string& why, std::optional<int> exit_code) {
    for (const auto& t : pending_transfers_)
        audit("TRANSFER", "STEP_FAILED", exit_code, t.upload_ms, t.file_name + ": " + why);
    pending_transfers_.clear();
}

// The verification of the staged files, SHUTDOWN, ACTIVATE and STARTUP as ONE remote command
// (activation.hpp; without a restart: the verification and ACTIVATE). Its markers arrive as the
// node prints them: each step is timed from them (its own duration and exit code) and gets its
// own deadline (the command's deadline moves to the next step's budget at each marker); its
// rows are written once the answer is in. A failure before VERIFIED leaves the live files and the service untouched (the
// staged files are discarded); from the shutdown on, the node is rolled back.
asio::awaitable<Result<void>> Pipeline::activate_release() {
    const bool restart = node_.requires_restart;
    activation_failed_step_ = "RESTART";
    // The operator's text inside our script is judged before anything is sent.
    if (restart) {
        for (const std::string* text : {&node_.shutdown_cmd, &node_.startup_cmd}) {
            const std::string step = text == &node_.shutdown_cmd ? "SHUTDOWN" : "STARTUP";
            if (auto ok = judge(step, *text); !ok) {
                end_pending_transfers("not verified: " + ok.error().message, std::nullopt);
                co_return ok.error();
            }
        }
    }
    std::vector<StagedFile> files;
    std::uint64_t total_bytes = 0;
    for (std::size_t i = 0; i < artifacts_.size(); ++i) {
        StagedFile f;
        f.staging_path = staged_[i];
        f.final_path = node_.deploy_path + "/" + artifacts_[i].file_name;
        f.sha256 = artifacts_[i].sha256;
        f.size = artifacts_[i].size;
        files.push_back(std::move(f));
        total_bytes += artifacts_[i].size;
    }
    const std::string cmd = activation_script(files, restart ? &node_.shutdown_cmd : nullptr,
                                              restart ? &node_.startup_cmd : nullptr,
                                              marker_write_script());

    // The steps after the verification, each audited when its marker arrives.
    struct Phase {
        Phase(std::string step, std::string what, milliseconds limit)
            : name(std::move(step)), detail(std::move(what)), budget(limit) {}
        std::string name, detail;
        milliseconds budget;
        bool started = false, ended = false;
        Clock::time_point at{};
    };
    std::vector<Phase> phases;
    if (restart) phases.emplace_back("SHUTDOWN", node_.shutdown_cmd, settings_.shutdown_timeout);
    phases.emplace_back("ACTIVATE", restart ? "with STARTUP in one remote command" : "",
                        settings_.command_timeout);
    if (restart) phases.emplace_back("STARTUP", node_.startup_cmd, settings_.startup_timeout);
    const auto sent = Clock::now();
    auto start_phase = [&](Phase& p, bool announce) {
        p.started = true;
        p.at = Clock::now();
        current_step_ = p.name;
        if (announce && settings_.on_step) settings_.on_step(node_.name, p.name);
        audit(p.name, "STEP_START", std::nullopt, std::nullopt, p.detail);
    };
    auto end_phase = [&](Phase& p, const char* event, std::optional<int> exit_code, std::string detail) {
        if (!p.started) start_phase(p, true);
        p.ended = true;
        audit(p.name, event, exit_code, ms(Clock::now() - p.at), std::move(detail));
    };
    auto verified_rows = [&]() {
        const auto verify_ms = ms(Clock::now() - sent);
        for (std::size_t i = 0; i < pending_transfers_.size(); ++i)
            audit("TRANSFER", "STEP_OK", std::nullopt, pending_transfers_[i].upload_ms + verify_ms,
                  "sha256 " + artifacts_[i].sha256 + " verified remotely (md5 " + artifacts_[i].md5 + ")");
        pending_transfers_.clear();
    };
    const std::string activated_detail =
        std::to_string(artifacts_.size()) + " artifact(s) renamed into place";

    ssh::ExecOptions eo;
    // The verification's budget: the command timeout and a second per 20 MiB to hash.
    eo.timeout = settings_.command_timeout + milliseconds(total_bytes / (20u << 20) * 1000);
    eo.display = restart ? "the activation command (sha256 check, SHUTDOWN, ACTIVATE, STARTUP)"
                         : "the activation command (sha256 check, ACTIVATE)";
    std::string seen;        // stdout so far: how far a command whose answer is lost got
    std::size_t parsed = 0;  // bytes of `seen` read as whole lines
    eo.on_stdout = [&](const std::string& out) -> std::optional<milliseconds> {
        seen = out;
        std::optional<milliseconds> next;
        for (auto nl = out.find('\n', parsed); nl != std::string::npos; nl = out.find('\n', parsed)) {
            const std::string line = out.substr(parsed, nl - parsed);
            parsed = nl + 1;
            std::size_t open = phases.size();  // the phase whose marker this is, if any
            if (line == "VERIFIED") {
                verified_rows();
                open = 0;
            } else if (restart && line == "SHUTDOWN_EXIT=0") {
                end_phase(phases[0], "STEP_OK", 0, {});
                open = 1;
            } else if (line == "ACTIVATED") {
                staged_.clear();
                end_phase(phases[restart ? 1 : 0], "STEP_OK", std::nullopt, activated_detail);
                open = restart ? 2 : phases.size();
            }
            if (open < phases.size()) {
                // The first phase was announced (on_step) when the command was sent.
                start_phase(phases[open], open > 0);
                next = phases[open].budget;
            }
        }
        return next;
    };
    // Live progress: the command that shuts the service down (or activates) is on its way.
    if (settings_.on_step) settings_.on_step(node_.name, phases[0].name);
    // From the moment it is sent until its answer says otherwise, the shutdown may have run.
    stage_ = Stage::live_changed;
    // The intent rows (the TRANSFER steps') are committed before run_activation sends anything.
    deferring_audit_ = true;
    Result<ssh::ExecResult> r = Error(errc::invalid_argument, "not run");
    try {
        r = co_await run_activation(phases[0].name, cmd, eo, restart);
    } catch (...) {
        // Cancelled: what the node reported so far is still recorded, and a step it had begun
        // ends as interrupted (the clean-up then rolls the node back).
        for (auto& p : phases)
            if (p.started && !p.ended) end_phase(p, "STEP_FAILED", std::nullopt, "interrupted");
        write_deferred_rows();
        throw;
    }
    write_deferred_rows();
    if (!r && (r.error().code == errc::audit_unavailable || r.error().code == errc::security_violation)) {
        // Refused before sending: nothing reached the node.
        stage_ = Stage::staged;
        end_pending_transfers("not verified: " + r.error().message, std::nullopt);
        co_return node_error(r.error().code, phases[0].name, r.error().message);
    }
    const std::optional<int> code =
        r && r->exit_signal.empty() ? std::optional<int>(r->exit_code) : std::nullopt;
    const ActivationOutcome o = r ? parse_activation(r->out, code, restart) : activation_lost(seen, restart);
    const std::string tail = r ? trim(r->err_tail()) : std::string();
    const std::string stderr_note = tail.empty() ? std::string() : "; stderr: " + tail;
    auto how = [&](std::optional<int> exit_code) {
        return exit_code ? "exited " + std::to_string(*exit_code)
                         : "killed by signal " + (r ? r->exit_signal : std::string("?"));
    };

    if (o.verified) {
        verified_rows();  // no-op when the marker was seen as it came
    } else if (!r) {
        activation_failed_step_ = "TRANSFER";
        const Error e = node_error(r.error().code, "TRANSFER", r.error().message);
        end_pending_transfers("not confirmed, the command carrying its verification got no answer: " +
                                  r.error().message, std::nullopt);
        co_return e;  // stage_ stays live_changed: how far it got is unknown, the rollback decides
    } else {
        // Nothing live changed: the staged files are discarded (a mismatch removed them already).
        stage_ = Stage::staged;
        activation_failed_step_ = "TRANSFER";
        Error e;
        if (o.mismatch_index && *o.mismatch_index < files.size()) {
            const auto& f = files[*o.mismatch_index];
            e = node_error(errc::checksum_mismatch, "TRANSFER",
                           "sha256 mismatch for " + f.staging_path + ": expected " + f.sha256 +
                               ", remote sha256 " + o.mismatch_sha256 + "; staging files removed, " +
                               f.final_path + " untouched");
        } else {
            e = node_error(errc::remote_command_failed, "TRANSFER",
                           "verifying the staged files failed (" + how(code) + ")" + stderr_note);
        }
        end_pending_transfers(e.message, o.failed_exit);
        co_return e;
    }
    // The steps after the verification: the failed one ends failed, those before it ok.
    const std::string target =
        node_.user + "@" + node_.host + ":" + std::to_string(node_.ssh_port) + ": remote command ";
    for (auto& p : phases) {
        const bool failed = o.failed && to_string(*o.failed) == p.name;
        if (!failed) {
            if (!p.ended)
                end_phase(p, "STEP_OK", p.name == "SHUTDOWN" ? o.shutdown_exit : (p.name == "STARTUP" ? code : std::nullopt),
                          p.name == "ACTIVATE" ? activated_detail : std::string());
            if (p.name == "ACTIVATE") staged_.clear();
            continue;
        }
        Error e;
        if (!r)
            e = node_error(r.error().code, p.name, r.error().message);
        else if (p.name == "SHUTDOWN")
            e = node_error(errc::remote_command_failed, "SHUTDOWN",
                           target + how(o.failed_exit) + ": " + node_.shutdown_cmd + stderr_note);
        else if (p.name == "STARTUP")
            e = node_error(errc::remote_command_failed, "STARTUP",
                           target + how(o.failed_exit) + ": " + node_.startup_cmd + stderr_note);
        else
            e = node_error(errc::remote_command_failed, "ACTIVATE",
                           "renaming the staged artifacts into place failed" + stderr_note);
        end_phase(p, "STEP_FAILED", o.failed_exit, e.message);
        co_return e;
    }
    co_return Result<void>{};
}

}  // namespace

http::HealthCheck health_check_for(const Node& node, int required_consecutive) {
    const HealthSpec& spec = node.health;
    http::HealthCheck hc;
    hc.kind = spec.type;
    hc.host = node.host;
    hc.port = spec.port;
    hc.path = spec.path;
    hc.timeout = spec.timeout;
    hc.interval = spec.interval;
    hc.request_timeout = spec.attempt_timeout;
    hc.expect_status = spec.expect_status;
    hc.body_contains = spec.body_contains;
    hc.ca_file = spec.ca_file;
    hc.tls_server_name = spec.tls_server_name;
    hc.insecure_skip_verify = spec.insecure_skip_verify;
    hc.command = spec.command;
    hc.required_consecutive = required_consecutive;
    hc.node = node.name;
    return hc;
}

namespace {

asio::awaitable<Result<void>> Pipeline::health(const std::string& step_name) {
    const HealthSpec& spec = node_.health;
    const http::HealthCheck hc = health_check_for(
        node_, settings_.strict_health.value_or(node_.tier == 1) ? settings_.strict_consecutive : 1);
    std::string detail = http::describe_target(hc);
    if (hc.required_consecutive > 1)
        detail += " (strict: " + std::to_string(hc.required_consecutive) + " consecutive " +
                  (spec.type == http::ProbeKind::command ? std::string("successes")
                   : spec.type == http::ProbeKind::tcp   ? std::string("connects")
                                                         : hc.expect_status.describe() + "s") +
                  ")";
    if (spec.type == http::ProbeKind::https && spec.insecure_skip_verify) {
        detail += " (TLS verification skipped: insecure_skip_verify)";
        if (settings_.logger && step_name == "HEALTH")
            settings_.logger->warn("node '{}': health check {} does not verify the server's "
                                   "certificate (insecure_skip_verify)",
                                   node_.name, http::describe_target(hc));
    }
    Step step(*this, step_name, detail);
    if (spec.type == http::ProbeKind::command) {
        if (auto ok = judge(step_name, spec.command); !ok) {
            step.failed(ok.error());
            co_return ok.error();
        }
    }
    if (auto ok = co_await intent_committed(step_name); !ok) {
        step.failed(ok.error());
        co_return ok.error();
    }
    failpoints(failpoint::When::before, step_name);
    Result<http::HealthOutcome> r = Error(errc::invalid_argument, "not run");
    if (spec.type == http::ProbeKind::command) {
        http::AttemptFn attempt = [this, &step_name](milliseconds limit) {
            return command_attempt(step_name, limit);
        };
        r = co_await http::wait_healthy(hc, attempt);
    } else {
        r = co_await http::wait_healthy(hc);
    }
    failpoints(failpoint::When::after, step_name);
    if (!r) {
        Error e(r.error().code,
                "node '" + node_.name + "': " + step_name + ": " + r.error().message);
        step.failed(e);
        co_return e;
    }
    step.ok(std::to_string(r->attempts) + " attempt(s)", r->last_status);
    co_return Result<void>{};
}

// One attempt of a `command` health check: the command on the node's session (a fresh one
// when an earlier attempt's timeout left it unusable), exit 0 = healthy.
asio::awaitable<http::Attempt> Pipeline::command_attempt(const std::string& step_name,
                                                         milliseconds limit) {
    http::Attempt a;
    const auto start = Clock::now();
    if (!co_await ensure_session(step_name)) {
        a.code = make_error_code(errc::connect_failed);
        a.reason = "no SSH session to run the command on";
        co_return a;
    }
    ssh::ExecOptions eo;
    eo.timeout = std::max(milliseconds(1),
                          limit - std::chrono::duration_cast<milliseconds>(Clock::now() - start));
    eo.max_stdout = 4096;
    auto r = co_await session_->exec(node_.health.command, eo);
    if (!r) {
        a.code = r.error().code;
        a.reason = r.error().message;
        co_return a;
    }
    a.status = r->exit_code;
    a.ok = r->succeeded();
    if (a.ok) {
        a.reason = "exit 0";
    } else {
        const std::string tail = trim(r->err_tail(200));
        a.reason = (r->exit_signal.empty() ? "exit " + std::to_string(r->exit_code)
                                           : "killed by signal " + r->exit_signal) +
                   (tail.empty() ? std::string() : " (stderr: " + tail + ")");
    }
    co_return a;
}

// A session for clean-up work: the pipeline's own if it still works, else a fresh one (a cut
// connection must not leave the lock or staging files behind).
asio::awaitable<bool> Pipeline::ensure_session(const std::string& why) {
    if (session_ && session_->usable()) co_return true;
    session_.reset();
    // strict: the key was verified (and, under accept-new, recorded) on the first connect.
    auto o = settings_.credentials->connect_options(node_, settings_.known_hosts,
                                                    ssh::HostKeyPolicy::strict,
                                                    settings_.connect_timeout, settings_.logger);
    if (!o) co_return false;
    auto ex = co_await asio::this_coro::executor;
    auto s = co_await ssh::Session::connect(ex, std::move(*o));
    if (!s) {
        audit("RECONNECT", "STEP_FAILED", std::nullopt, std::nullopt,
              why + ": " + s.error().message);
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
    auto r = co_await run_script("DISCARD_STAGED", "rm -f -- " + d_ + "/.guardia-stage.*",
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
    // Only a backup of this very deploy path is restored: a backup path from the store or a
    // lock that names another directory (an inventory changed since) must never be copied over.
    const std::string prefix = node_.deploy_path + ".bak_";
    if (report_.backup_path.compare(0, prefix.size(), prefix) != 0 ||
        report_.backup_path.find('/', prefix.size()) != std::string::npos) {
        Error e = node_error(errc::invalid_argument, "ROLLBACK",
                             "refusing to restore from '" + report_.backup_path +
                                 "': not a backup of " + node_.deploy_path);
        step.failed(e);
        co_return e;
    }
    if (!co_await ensure_session("rollback")) {
        Error e =
            node_error(errc::connection_lost, "ROLLBACK", "cannot reach the node to roll back");
        step.failed(e);
        co_return e;
    }
    (void)co_await intent_committed("ROLLBACK");  // a safety step: never refused
    failpoints(failpoint::When::before, "ROLLBACK");
    std::vector<std::string> notes;
    if (node_.requires_restart) {
        // Stop whatever runs now. A shutdown that fails again is noted, not fatal: the restore
        // and the health check of the restored service decide.
        Step s(*this, "ROLLBACK_SHUTDOWN", node_.shutdown_cmd);
        auto r =
            co_await run_operator("ROLLBACK_SHUTDOWN", node_.shutdown_cmd,
                                  settings_.shutdown_timeout, true);
        if (r)
            s.ok({}, r->exit_code);
        else {
            s.failed(r.error());
            notes.push_back("shutdown: " + r.error().message);
            if (!session_->usable() &&
                !co_await ensure_session("rollback after shutdown failure")) {
                Error e =
                    node_error(errc::connection_lost, "ROLLBACK", "lost the node during rollback");
                step.failed(e);
                co_return e;
            }
        }
    }
    {
        // Exact restore: a fresh copy of the backup replaces the deploy path as a whole (never
        // `cp -r bak live`, which nests the copy when live exists). Staging files vanish with it.
        // A deploy path that is a symbolic link is resolved: the real directory it points to
        // is replaced, the link itself stays as it is (removing the link and renaming the copy
        // to its name would leave the real directory untouched). A backup that is itself a
        // link is refused: it is not a copy of anything. -T: never into an existing directory.
        Step s(*this, "RESTORE", report_.backup_path);
        const std::string cmd =
            "d=" + d_ + "; b=" + shell_quote(report_.backup_path) +
            "; { [ -d \"$b\" ] && [ ! -h \"$b\" ]; } || { echo \"backup $b missing or not a "
            "directory\" >&2; exit 30; }"
            "; if [ -h \"$d\" ]; then r=$(cd -P -- \"$d\" && pwd -P) || { echo \"deploy path $d is "
            "a link that cannot be resolved\" >&2; exit 31; }"
            "; [ \"$r\" != / ] || { echo \"deploy path $d is a link to /\" >&2; exit 31; }"
            "; else r=$d; fi"
            "; t=\"$r.guardia-restore\"; rm -rf -- \"$t\" && cp -a -T -- \"$b\" \"$t\" && rm -rf -- \"$r\" "
            "&& mv -T -- \"$t\" \"$r\""
            // The marker saved with this backup comes back with it; none saved (or a backup
            // from before markers): the marker goes, it would name the release just undone.
            " && m=" +
            shell_quote(marker_path_) +
            " && if [ -s \"$b.guardia-release\" ]; then cp -- \"$b.guardia-release\" \"$m.tmp\" && "
            "mv -f -T -- \"$m.tmp\" \"$m\"; else rm -f -- \"$m\"; fi";
        auto r = co_await run_script("RESTORE", cmd, settings_.backup_timeout, true);
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
        auto r =
            co_await run_operator("ROLLBACK_STARTUP", node_.startup_cmd,
                                  settings_.startup_timeout, true);
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
    failpoints(failpoint::When::after, "ROLLBACK");
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
    // After an upload the session's SFTP channel is open: the owner file is read and the lock
    // removed by the node's sftp server, with no shell and no process on the node. Anything
    // unexpected there (an error, a lock directory holding more than its owner file) falls
    // through to the shell command below, which decides again from the owner file.
    if (session_ && session_->sftp_started()) {
        auto released = co_await unlock_over_sftp();
        if (released && *released) {
            report_.lock_released = true;
            step.ok("over SFTP");
            co_return;
        }
        if (released) {
            step.ok("no lock of this rollout to release");
            co_return;
        }
    }
    // Only our own lock goes: the owner file must name this rollout (read with built-ins).
    const std::string cmd =
        "l=" + shell_quote(lock_path_) + "; o=; { while IFS= read -r x; do [ \"$x\" = " +
        shell_quote("rollout=" + settings_.rollout_id) +
        " ] && o=1; done < \"$l/owner\"; } 2>/dev/null"
        "; if [ -n \"$o\" ]; then rm -rf -- \"$l\" && echo RELEASED; else echo NOT_OURS; fi";
    auto r = co_await run_script("UNLOCK", cmd, settings_.command_timeout, true);
    if (r && r->out.rfind("RELEASED", 0) == 0) {
        report_.lock_released = true;
        step.ok();
    } else if (r) {
        step.ok("no lock of this rollout to release");
    } else {
        step.failed(r.error());
    }
}

// UNLOCK on the session's SFTP channel: true released, false not ours (no owner file, or it
// names another rollout: left alone), an error when the shell command must decide instead. The
// owner file goes first, then the directory; were the directory to hold anything else (rmdir
// fails), the lock is still ours (we read its owner file and nobody takes a held lock), so the
// shell's `rm -rf` of exactly that directory finishes it.
asio::awaitable<Result<bool>> Pipeline::unlock_over_sftp() {
    const std::string owner = lock_path_ + "/owner";
    // The same write-ahead intent and crash points as a remote command of the step (run_script).
    if (auto ok = co_await intent_committed("UNLOCK"); !ok) co_return ok.error();
    failpoints(failpoint::When::before, "UNLOCK");
    bool missing = false;
    auto text = co_await session_->sftp_read(owner, 64 * 1024, settings_.command_timeout, missing);
    if (!text && !missing) co_return text.error();
    if (!text || !lock_owned_by(*text, settings_.rollout_id)) {
        failpoints(failpoint::When::after, "UNLOCK");
        co_return false;
    }
    if (auto r = co_await session_->sftp_unlink(owner, settings_.command_timeout); !r)
        co_return r.error();
    if (co_await session_->sftp_rmdir(lock_path_, settings_.command_timeout)) {
        failpoints(failpoint::When::after, "UNLOCK");
        co_return true;
    }
    if (!session_->usable()) co_return Error(errc::connection_lost, "session lost during UNLOCK");
    auto r = co_await run_script("UNLOCK", "rm -rf -- " + shell_quote(lock_path_),
                                 settings_.command_timeout, true);
    if (r && r->succeeded()) co_return true;
    co_return Error(errc::remote_command_failed, "removing " + lock_path_ + " failed");
}

asio::awaitable<NodeReport> Pipeline::run() {
    const auto started = Clock::now();
    StepChain chain;
    chain.note("VALIDATE", validate(true));
    try {
        if (chain.ok()) chain.note("CONNECT", co_await connect());
        if (chain.ok()) {
            auto r = co_await prepare();
            chain.note(prepare_failed_step_, std::move(r));
        }
        if (chain.ok()) chain.note("TRANSFER", co_await transfer());
        if (chain.ok()) {
            auto r = co_await activate_release();
            chain.note(activation_failed_step_, std::move(r));
        }
        if (chain.ok()) chain.note("HEALTH", co_await health("HEALTH"));
    } catch (const boost::system::system_error&) {
        note_cancelled(chain);
    }
    end_pending_transfers("interrupted", std::nullopt);
    // From here on everything must run to the end: the clean-up ignores any further
    // cancellation (Asio would otherwise throw at every co_await of a cancelled node, and a
    // late signal would interrupt the rollback). Each clean-up step has its own deadline.
    co_await asio::this_coro::reset_cancellation_state(asio::disable_cancellation());

    if (chain.ok()) {
        report_.outcome = NodeOutcome::deployed;
        audit("SUMMARY", "DEPLOY_SUCCESS", std::nullopt, ms(Clock::now() - started), "");
    } else {
        report_.failed_step = chain.failed_step;
        report_.error = chain.outcome.error();
        audit("SUMMARY", "DEPLOY_FAILED", std::nullopt, ms(Clock::now() - started),
              report_.error.message);
        co_await cleanup_after_failure(started);
    }
    co_await unlock();
    if (session_ && session_->usable()) co_await session_->disconnect();
    report_.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
    co_return report_;
}

asio::awaitable<void> Pipeline::cleanup_after_failure(Clock::time_point started) {
    if (stage_ == Stage::live_changed) {
        auto rb = co_await rollback();
        if (rb) {
            report_.outcome = NodeOutcome::rolled_back;
            audit("SUMMARY", "ROLLBACK_OK", std::nullopt, ms(Clock::now() - started),
                  report_.backup_path);
        } else {
            report_.outcome = NodeOutcome::rollback_failed;
            report_.rollback_error = rb.error().message;
            audit("SUMMARY", "ROLLBACK_FAILED", std::nullopt, ms(Clock::now() - started),
                  rb.error().message);
        }
    } else {
        // Nothing live changed: only our staging files may need to go.
        if (stage_ == Stage::staged ||
            (stage_ == Stage::backed_up && report_.failed_step == "TRANSFER"))
            co_await discard_staged();
        report_.outcome = NodeOutcome::failed_unchanged;
    }
}

// Another rollout's lock, seen without taking it (dry run).
asio::awaitable<Result<void>> Pipeline::probe_lock() {
    Step step(*this, "LOCK_PROBE", lock_path_);
    const std::string cmd = "l=" + shell_quote(lock_path_) +
                            "; if [ -e \"$l\" ]; then echo HELD; cat -- \"$l/owner\" 2>/dev/null; "
                            "else echo FREE; fi";
    auto r = co_await run_script("LOCK_PROBE", cmd, settings_.command_timeout, true);
    if (!r) {
        step.failed(r.error());
        co_return r.error();
    }
    if (r->out.rfind("FREE", 0) == 0) {
        step.ok("not locked");
        co_return Result<void>{};
    }
    std::string owner = trim(r->out.substr(
        r->out.find('\n') == std::string::npos ? r->out.size() : r->out.find('\n') + 1));
    for (auto& c : owner)
        if (c == '\n') c = ' ';
    Error e = node_error(errc::node_locked, "LOCK_PROBE",
                         "node is locked by another rollout (" + lock_path_ +
                             (owner.empty() ? std::string(")") : ": " + owner + ")"));
    step.failed(e);
    co_return e;
}

asio::awaitable<NodeReport> Pipeline::run_precheck() {
    const auto started = Clock::now();
    StepChain chain;
    chain.note("VALIDATE", validate(true));
    try {
        if (chain.ok()) chain.note("CONNECT", co_await connect());
        if (chain.ok()) chain.note("PRECHECK", co_await precheck());
        if (chain.ok()) chain.note("LOCK_PROBE", co_await probe_lock());
    } catch (const boost::system::system_error&) {
        note_cancelled(chain);
    }
    co_await asio::this_coro::reset_cancellation_state(asio::disable_cancellation());
    if (chain.ok()) {
        report_.outcome = NodeOutcome::deployed;
        audit("SUMMARY", "DRY_RUN_OK", std::nullopt, ms(Clock::now() - started), "would deploy");
    } else {
        report_.outcome = NodeOutcome::failed_unchanged;
        report_.failed_step = chain.failed_step;
        report_.error = chain.outcome.error();
        audit("SUMMARY", "DRY_RUN_FAILED", std::nullopt, ms(Clock::now() - started),
              report_.error.message);
    }
    if (session_ && session_->usable()) co_await session_->disconnect();
    report_.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
    co_return report_;
}

asio::awaitable<NodeReport> Pipeline::run_rollback(const std::string& backup_path,
                                                   const std::vector<ArtifactSpec>& expected_live) {
    const auto started = Clock::now();
    report_.backup_path = backup_path;
    StepChain chain;
    chain.note("VALIDATE", validate(false));
    if (backup_path.empty())
        chain.note("VALIDATE", node_error(errc::invalid_argument, "VALIDATE",
                                          "no backup recorded to roll back to"));
    try {
        if (chain.ok()) chain.note("CONNECT", co_await connect());
        if (chain.ok()) chain.note("LOCK", co_await lock());
        // A marker to check (guardia rollback, operator rollback) is checked even when no
        // artifact list is known: never restore over a release that is not the one to undo.
        if (chain.ok() && (!expected_live.empty() || !expect_marker.rollout_id.empty() ||
                           !expect_marker.sr_id.empty()))
            chain.note("VERIFY_LIVE", co_await verify_live(expected_live));
    } catch (const boost::system::system_error&) {
        note_cancelled(chain);
    }
    co_await asio::this_coro::reset_cancellation_state(asio::disable_cancellation());
    if (!chain.ok()) {
        // Not reached, not ours to touch, or no longer running the build to undo: the node
        // stays as it is.
        report_.outcome = NodeOutcome::failed_unchanged;
        report_.failed_step = chain.failed_step;
        report_.error = chain.outcome.error();
        audit("SUMMARY", "ROLLBACK_FAILED", std::nullopt, ms(Clock::now() - started),
              report_.error.message);
    } else {
        stage_ = Stage::live_changed;
        auto rb = co_await rollback();
        if (rb) {
            report_.outcome = NodeOutcome::rolled_back;
            audit("SUMMARY", "ROLLBACK_OK", std::nullopt, ms(Clock::now() - started), backup_path);
        } else {
            report_.outcome = NodeOutcome::rollback_failed;
            report_.failed_step = "ROLLBACK";
            report_.error = rb.error();
            report_.rollback_error = rb.error().message;
            audit("SUMMARY", "ROLLBACK_FAILED", std::nullopt, ms(Clock::now() - started),
                  rb.error().message);
        }
    }
    co_await unlock();
    if (session_ && session_->usable()) co_await session_->disconnect();
    report_.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
    co_return report_;
}

// Crash recovery: see recover_node() in the header.
asio::awaitable<NodeReport> Pipeline::run_recover(const std::string& known_backup_path) {
    const auto started = Clock::now();
    StepChain chain;
    try {
        chain.note("CONNECT", co_await connect());
    } catch (const boost::system::system_error&) {
        note_cancelled(chain);
    }
    co_await asio::this_coro::reset_cancellation_state(asio::disable_cancellation());
    if (!chain.ok()) {
        report_.outcome = NodeOutcome::failed_unchanged;
        report_.failed_step = chain.failed_step;
        report_.error = chain.outcome.error();
        audit("SUMMARY", "RECOVERY_FAILED", std::nullopt, ms(Clock::now() - started),
              report_.error.message + " (the node could not be inspected; any lock stays)");
        report_.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
        co_return report_;
    }

    // One read-only command: whose lock, which backup, and what is deployed now.
    const std::string sums = live_sums_script(artifacts_);
    const std::string cmd =
        "d=" + d_ + "; l=" + shell_quote(lock_path_) +
        "; if [ -d \"$l\" ]; then o=; b=; while IFS= read -r x; do case \"$x\" in " +
        shell_quote("rollout=" + settings_.rollout_id) +
        ") o=1;; backup=*) b=${x#backup=};; esac; done < \"$l/owner\" 2>/dev/null"
        "; if [ -n \"$o\" ]; then echo OURS; echo \"BACKUP=$b\"; else echo OTHER; fi"
        "; else echo FREE; fi" +
        sums + "; true";
    Step inspect(*this, "RECOVER_INSPECT", lock_path_);
    auto r = co_await run_script("RECOVER_INSPECT", cmd, settings_.command_timeout, true);
    if (!r) {
        inspect.failed(r.error());
        report_.outcome = NodeOutcome::failed_unchanged;
        report_.failed_step = "RECOVER_INSPECT";
        report_.error = r.error();
        audit("SUMMARY", "RECOVERY_FAILED", std::nullopt, ms(Clock::now() - started),
              r.error().message);
        if (session_ && session_->usable()) co_await session_->disconnect();
        report_.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
        co_return report_;
    }
    const std::string& out = r->out;
    const bool ours = out.rfind("OURS\n", 0) == 0;
    std::string lock_backup;
    if (auto pos = out.find("\nBACKUP="); pos != std::string::npos) {
        const auto end = out.find('\n', pos + 1);
        lock_backup = out.substr(pos + 8, end == std::string::npos ? end : end - pos - 8);
    }
    const bool new_build_live = !artifacts_.empty() && live_mismatches(out, artifacts_).empty();

    if (ours) {
        stage_ = Stage::locked;  // the lock is this rollout's: unlock() below releases it
        report_.backup_path = lock_backup.empty() ? known_backup_path : lock_backup;
        inspect.ok(
            "left mid-step holding this rollout's lock; backup " +
            (report_.backup_path.empty() ? std::string("not taken yet") : report_.backup_path));
        if (!report_.backup_path.empty()) {
            stage_ = Stage::live_changed;
            auto rb = co_await rollback();
            if (rb) {
                report_.outcome = NodeOutcome::rolled_back;
                report_.failed_step = "RECOVERY";
                report_.error =
                    node_error(errc::cancelled, "RECOVERY",
                               "interrupted mid-step; restored from " + report_.backup_path);
                audit("SUMMARY", "ROLLBACK_OK", std::nullopt, ms(Clock::now() - started),
                      report_.backup_path);
            } else {
                report_.outcome = NodeOutcome::rollback_failed;
                report_.failed_step = "ROLLBACK";
                report_.error = rb.error();
                report_.rollback_error = rb.error().message;
                audit("SUMMARY", "ROLLBACK_FAILED", std::nullopt, ms(Clock::now() - started),
                      rb.error().message);
            }
        } else {
            stage_ = Stage::staged;
            co_await discard_staged();
            report_.outcome = NodeOutcome::failed_unchanged;
            report_.failed_step = "RECOVERY";
            report_.error = node_error(errc::cancelled, "RECOVERY",
                                       "interrupted before its backup was taken; nothing live "
                                       "had changed");
        }
    } else {
        inspect.ok(
            std::string(out.rfind("OTHER", 0) == 0 ? "locked by another rollout" : "not locked") +
            "; new build " + (new_build_live ? "live" : "not live"));
        if (new_build_live) {
            report_.outcome = NodeOutcome::deployed;
        } else {
            report_.outcome = NodeOutcome::failed_unchanged;
            report_.failed_step = "RECOVERY";
            report_.error = node_error(errc::cancelled, "RECOVERY",
                                       "interrupted; the node runs its previous build");
        }
    }
    audit("SUMMARY", "RECOVERED", std::nullopt, ms(Clock::now() - started),
          std::string(to_string(report_.outcome)) +
              (report_.error.message.empty() ? std::string() : ": " + report_.error.message));
    co_await unlock();
    if (session_ && session_->usable()) co_await session_->disconnect();
    report_.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - started);
    co_return report_;
}

}  // namespace

asio::awaitable<NodeReport> recover_node(const Node& node,
                                         const std::vector<ArtifactSpec>& artifacts,
                                         const std::string& known_backup_path,
                                         const PipelineSettings& settings) {
    Pipeline pipeline(node, artifacts, settings);
    co_return co_await pipeline.run_recover(known_backup_path);
}

asio::awaitable<NodeReport> deploy_node(const Node& node,
                                        const std::vector<ArtifactSpec>& artifacts,
                                        const PipelineSettings& settings) {
    NodeReport report;
    {
        Pipeline pipeline(node, artifacts, settings);
        report = co_await pipeline.run();
    }
    // Locked by a rollout whose guardia process on this host no longer exists: nobody else
    // will ever release it. The node is recovered for that rollout exactly as its own crash
    // recovery would (restored from the backup its lock names, staging files removed, lock
    // released; audited under that rollout's id), then deployed once more.
    // The pipeline disabled cancellation for its clean-up, for this whole coroutine chain: from
    // here on only should_stop() can say that the rollout stopped or the node's time is up.
    auto stop_asked = [&] { return settings.should_stop && settings.should_stop(node.name); };
    if (report.error.code != errc::node_locked || report.busy_lock_rollout.empty() ||
        report.busy_lock_rollout == settings.rollout_id ||
        owner_liveness(report.busy_lock_owner) != OwnerLiveness::gone || stop_asked())
        co_return report;
    PipelineSettings dead = settings;
    dead.rollout_id = report.busy_lock_rollout;
    dead.sr_id.clear();
    dead.reclaim_own_lock = true;
    dead.on_step = nullptr;
    dead.on_backup = nullptr;
    if (settings.audit) {
        store::AuditEvent e;
        e.sr_id = settings.sr_id;
        e.rollout_id = settings.rollout_id;
        e.node = node.name;
        e.step = "LOCK";
        e.event = "LOCK_STALE";
        e.detail = "held by " + report.busy_lock_owner + " (rollout " + report.busy_lock_rollout +
                   "), a guardia process on this host that no longer exists: recovering the "
                   "node for that rollout, then deploying again";
        settings.audit->record(std::move(e));
    }
    const std::vector<ArtifactSpec> unknown_build;  // only the lock and its backup matter here
    NodeReport recovered = co_await recover_node(node, unknown_build, "", dead);
    const std::string what = "stale lock of " + report.busy_lock_owner + " (rollout " +
                             report.busy_lock_rollout + "): " +
                             std::string(to_string(recovered.outcome)) +
                             (recovered.error.message.empty() ? std::string()
                                                              : " (" + recovered.error.message + ")");
    if (!recovered.lock_released || stop_asked()) {
        report.error.message += "; " + what;
        co_return report;
    }
    // A fresh deploy: cancellable again (a cancel emitted meanwhile was seen by stop_asked()).
    co_await asio::this_coro::reset_cancellation_state();
    Pipeline again(node, artifacts, settings);
    NodeReport second = co_await again.run();
    second.stale_lock_recovery = what;
    co_return second;
}

asio::awaitable<NodeReport> precheck_node(const Node& node,
                                          const std::vector<ArtifactSpec>& artifacts,
                                          const PipelineSettings& settings) {
    Pipeline pipeline(node, artifacts, settings);
    co_return co_await pipeline.run_precheck();
}

asio::awaitable<NodeReport> rollback_node(const Node& node, const std::string& backup_path,
                                          const PipelineSettings& settings) {
    static const std::vector<ArtifactSpec> unchecked;
    co_return co_await rollback_node(node, backup_path, settings, unchecked);
}

asio::awaitable<NodeReport> rollback_node(const Node& node, const std::string& backup_path,
                                          const PipelineSettings& settings,
                                          const std::vector<ArtifactSpec>& expected_live) {
    MarkerExpectation unchecked;
    co_return co_await rollback_release(node, backup_path, settings, expected_live, unchecked);
}

asio::awaitable<NodeReport> rollback_release(const Node& node, const std::string& backup_path,
                                             const PipelineSettings& settings,
                                             const std::vector<ArtifactSpec>& expected_live,
                                             MarkerExpectation expect) {
    // The rollback restores files and runs the node's scripts; no artifact is shipped.
    static const std::vector<ArtifactSpec> none_shipped{ArtifactSpec()};
    Pipeline pipeline(node, none_shipped, settings);
    pipeline.expect_marker = std::move(expect);
    co_return co_await pipeline.run_rollback(backup_path, expected_live);
}

}  // namespace guardia::deploy
