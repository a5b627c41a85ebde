// The node pipeline against a real fleet: every outcome is asserted on the node itself
// (file checksums and service state via `tools/fleet check`) and in the audit log.
#include "../support/fleet.hpp"
#include "guardia/core/local_io.hpp"
#include "guardia/deploy/credential_store.hpp"
#include "guardia/deploy/inventory.hpp"
#include "guardia/deploy/node_pipeline.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace guardia;
using namespace guardia::deploy;
namespace asio = boost::asio;
namespace json = boost::json;
using guardia::test::shell;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

const guardia::test::Fleet& fleet() { return guardia::test::Fleet::from_env("GUARDIA_TEST_FLEET_DEPLOY"); }

std::string fleet_tool() {
    const char* t = std::getenv("GUARDIA_FLEET_TOOL");
    REQUIRE_MESSAGE(t != nullptr, "GUARDIA_FLEET_TOOL is not set (run through ctest)");
    return t;
}

// The node as `tools/fleet check` sees it.
json::object check(const std::string& node) {
    // Appended, not "'" + std::string&&: GCC 12 -O3 false -Werror=restrict (bug 105329).
    std::string cmd(1, '\'');
    cmd += fleet_tool();
    cmd += "' check --dir '";
    cmd += fleet().dir;
    cmd += "' --node ";
    cmd += node;
    cmd += " --backups";
    auto out = shell(cmd);
    return json::parse(out).at("nodes").at(node).as_object();
}

std::string tree(const json::object& c) { return json::value_to<std::string>(c.at("tree_sha256")); }
bool running(const json::object& c) { return c.at("service_running").as_bool(); }
std::size_t backups(const json::object& c) { return c.at("backups").as_array().size(); }
bool locked(const json::object& c) { return c.at("lock_present").as_bool(); }
std::size_t others(const json::object& c) { return c.at("other_entries").as_array().size(); }

// Stops `ioc` (what kill -9 leaves: every coroutine on it dies mid-step) once the step that is
// starting has its intent row committed: the pipeline awaits durable() for it, and no
// durable() may still be pending in the writer when its io_context is destroyed. This
// barrier is queued after the pipeline's, and the writer completes barriers in order.
// The writer thread releases a completed durable()'s hold on its io_context just after it
// posts the completion; an io_context stopped by hand (above) must outlive that. A barrier
// queued now completes only after the writer is done with every earlier one.
void settle(store::AuditWriter& audit) {
    asio::io_context other;
    (void)guardia::test::run(other, audit.durable(), seconds(30));
}

void stop_after_intent(asio::io_context& ioc, store::AuditWriter& audit) {
    asio::co_spawn(
        ioc,
        [&ioc, &audit]() -> asio::awaitable<void> {
            (void)co_await audit.durable();
            ioc.stop();
        },
        asio::detached);
}

struct Rig {
    Inventory inventory;
    std::shared_ptr<CredentialStore> credentials;
    std::shared_ptr<ssh::KnownHosts> known_hosts;
    guardia::test::TempDir tmp;
    std::string db_path;
    std::unique_ptr<store::AuditWriter> audit;
    int rollouts = 0;

    Rig() {
        auto inv = load_inventory(fleet().dir + "/inventory.json");
        REQUIRE_MESSAGE(inv.has_value(), (inv ? "" : inv.error().message));
        inventory = std::move(*inv);
        credentials = *CredentialStore::open("");
        known_hosts = *ssh::KnownHosts::load(fleet().known_hosts());
        db_path = tmp.path() + "/guardia.db";
        audit = std::make_unique<store::AuditWriter>(db_path);
        audit->start();
    }

    const Node& node(const std::string& name) const {
        for (const auto& n : inventory.nodes)
            if (n.name == name) return n;
        FAIL("no node " << name);
        throw 0;
    }

    // A local artifact named `file` (replacing the node's file of that name) with `content`.
    ArtifactSpec artifact(const std::string& file, const std::string& content) {
        const auto dir = tmp.path() + "/art" + std::to_string(++rollouts);
        std::filesystem::create_directories(dir);
        { std::ofstream(dir + "/" + file, std::ios::binary) << content; }
        auto a = describe_artifact(dir + "/" + file);
        REQUIRE(a.has_value());
        return *a;
    }

    PipelineSettings settings(const std::string& rollout) {
        PipelineSettings s;
        s.sr_id = "SR-TEST";
        s.rollout_id = rollout;
        s.owner = "guardia-test";
        s.known_hosts = known_hosts;
        s.credentials = credentials;
        s.audit = audit.get();
        s.connect_timeout = seconds(5);
        s.shutdown_timeout = seconds(3);
        s.startup_timeout = seconds(10);
        return s;
    }

    NodeReport deploy(const std::string& node_name, std::vector<ArtifactSpec> arts,
                      const std::string& rollout, PipelineSettings* custom = nullptr) {
        asio::io_context ioc;
        PipelineSettings s = custom ? *custom : settings(rollout);
        const Node& n = node(node_name);
        auto report = guardia::test::run(ioc, deploy_node(n, arts, s), seconds(120));
        return report;
    }

    // The same for a node changed by the test (another deploy_path, key, port...).
    NodeReport deploy(const Node& n, std::vector<ArtifactSpec> arts, PipelineSettings s) {
        asio::io_context ioc;
        return guardia::test::run(ioc, deploy_node(n, arts, s), seconds(120));
    }

    // Audit events of one rollout and node, in order: "STEP:EVENT".
    std::vector<std::string> events(const std::string& rollout, const std::string& node_name) {
        asio::io_context ioc;
        auto durable = guardia::test::run(ioc, audit->durable(), seconds(10));
        REQUIRE(durable.has_value());
        store::Database db(db_path);
        auto rows = db.audit_for_rollout(rollout);
        REQUIRE(rows.has_value());
        std::vector<std::string> out;
        for (const auto& r : *rows)
            if (r.node == node_name) out.push_back(r.step + ":" + r.event);
        return out;
    }
};

bool has(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
}

std::string bad_content(const char* marker) { return std::string("build 2\n") + marker + "\n"; }

// Runs a clean-up shell command when the test case ends, passed or failed: the fleet's nodes
// are shared by every test case of this file.
struct Cleanup {
    std::string command;
    ~Cleanup() {
        try {
            shell(command);
        } catch (...) {
        }
    }
};

// Every entry under `dir` (type, mode, path, link target) and every file's sha256, sorted:
// equal listings = identical trees. Never follows a symlink below `dir`.
std::string listing(const std::string& dir) {
    return shell("cd -P -- '" + dir + "' && { find . -printf '%y %m %p -> %l\\n'; find . -type f -exec sha256sum -- {} +; } | LC_ALL=C sort");
}

bool exists(const std::string& path) { return shell("[ -e '" + path + "' ] || [ -L '" + path + "' ] && echo y || echo n") == "y\n"; }

}  // namespace

TEST_SUITE("pipeline") {
    TEST_CASE("a clean deploy: new artifact live, service healthy, backup kept, lock released") {
        Rig rig;
        const auto before = check("node-0001");
        auto art = rig.artifact("app.jar", "app build 2\n");
        auto r = rig.deploy("node-0001", {art}, "R-clean");
        CHECK_MESSAGE(r.outcome == NodeOutcome::deployed, r.error.message);
        const auto after = check("node-0001");
        CHECK(json::value_to<std::string>(after.at("files").at("app.jar").at("sha256")) == art.sha256);
        CHECK(running(after));
        CHECK_FALSE(locked(after));
        CHECK(others(after) == 0);  // no staging file left
        // One more backup, up to the retention limit (3 by default), and ours is among them.
        CHECK(backups(after) == std::min<std::size_t>(backups(before) + 1, 3));
        const auto ours = std::filesystem::path(r.backup_path).filename().string();
        bool listed = false;
        for (const auto& b : after.at("backups").as_array())
            listed = listed || std::filesystem::path(json::value_to<std::string>(b)).filename() == ours;
        CHECK(listed);
        CHECK(r.lock_released);
        // The backup is an exact copy of what ran before.
        CHECK(json::value_to<std::string>(after.at("backup_trees").at(
                  std::filesystem::path(r.backup_path).filename().string())) == tree(before));
        auto ev = rig.events("R-clean", "node-0001");
        for (const char* step : {"CONNECT", "PRECHECK", "LOCK", "BACKUP", "TRANSFER", "SHUTDOWN",
                                 "ACTIVATE", "STARTUP", "HEALTH", "UNLOCK"}) {
            CAPTURE(step);
            CHECK(has(ev, std::string(step) + ":STEP_START"));
            CHECK(has(ev, std::string(step) + ":STEP_OK"));
        }
        CHECK(has(ev, "SUMMARY:DEPLOY_SUCCESS"));
    }

    TEST_CASE("startup fails with the new build: rolled back byte-identical, healthy again") {
        Rig rig;
        const auto before = check("node-0002");
        REQUIRE(running(before));
        auto r = rig.deploy("node-0002", {rig.artifact("app.jar", bad_content("GUARDIA_FAULT=startup_fails"))},
                            "R-startup");
        CHECK(r.outcome == NodeOutcome::rolled_back);
        CHECK(r.failed_step == "RESTART");
        CHECK(r.error.message.find("STARTUP") != std::string::npos);
        const auto after = check("node-0002");
        CHECK(tree(after) == tree(before));
        CHECK(running(after));
        CHECK_FALSE(locked(after));
        CHECK(others(after) == 0);
        auto ev = rig.events("R-startup", "node-0002");
        CHECK(has(ev, "STARTUP:STEP_FAILED"));
        CHECK(has(ev, "SUMMARY:DEPLOY_FAILED"));
        CHECK(has(ev, "RESTORE:STEP_OK"));
        CHECK(has(ev, "SUMMARY:ROLLBACK_OK"));
    }

    TEST_CASE("a bad build (health 503) is rolled back byte-identical") {
        Rig rig;
        const auto before = check("node-0002");
        auto r = rig.deploy("node-0002", {rig.artifact("app.jar", bad_content("GUARDIA_FAULT=unhealthy"))},
                            "R-bad");
        CHECK(r.outcome == NodeOutcome::rolled_back);
        CHECK(r.failed_step == "HEALTH");
        CHECK(r.error.message.find("503") != std::string::npos);
        const auto after = check("node-0002");
        CHECK(tree(after) == tree(before));
        CHECK(running(after));
        CHECK(after.at("artifact_healthy").as_bool());
        CHECK(has(rig.events("R-bad", "node-0002"), "SUMMARY:ROLLBACK_OK"));
    }

    TEST_CASE("health never 200: rolled back; the rollback's own health failure is reported") {
        Rig rig;
        const auto before = check("node-0003");
        auto r = rig.deploy("node-0003", {rig.artifact("app.jar", "build 2\n")}, "R-never");
        CHECK(r.failed_step == "HEALTH");
        // The node is restored exactly, but stays unhealthy (its fault is not the build's):
        // that is ROLLBACK_FAILED, said plainly.
        CHECK(r.outcome == NodeOutcome::rollback_failed);
        CHECK(r.rollback_error.find("ROLLBACK_HEALTH") != std::string::npos);
        CHECK(tree(check("node-0003")) == tree(before));
        auto ev = rig.events("R-never", "node-0003");
        CHECK(has(ev, "RESTORE:STEP_OK"));
        CHECK(has(ev, "SUMMARY:ROLLBACK_FAILED"));
        CHECK_FALSE(locked(check("node-0003")));
    }

    TEST_CASE("disk over the threshold: refused at pre-check, node untouched") {
        Rig rig;
        const auto before = check("node-0004");
        auto r = rig.deploy("node-0004", {rig.artifact("app.jar", "build 2\n")}, "R-disk");
        CHECK(r.outcome == NodeOutcome::failed_unchanged);
        CHECK(r.failed_step == "PRECHECK");
        CHECK(r.error.code == errc::precheck_failed);
        CHECK(r.error.message.find("above the threshold of 90 %") != std::string::npos);
        const auto after = check("node-0004");
        CHECK(tree(after) == tree(before));
        CHECK(backups(after) == backups(before));
        CHECK_FALSE(locked(after));
    }

    TEST_CASE("unreachable, wrong host key, auth refused: untouched, with a clear error") {
        Rig rig;
        struct Case {
            const char* node;
            errc code;
            const char* words;
        };
        for (Case c : {Case{"node-0005", errc::connect_failed, "connect"},
                       Case{"node-0006", errc::host_key_changed, "CHANGED"},
                       Case{"node-0007", errc::auth_failed, "refused"}}) {
            CAPTURE(c.node);
            const auto before = check(c.node);
            auto r = rig.deploy(c.node, {rig.artifact("app.jar", "build 2\n")}, std::string("R-") + c.node);
            CHECK(r.outcome == NodeOutcome::failed_unchanged);
            CHECK(r.failed_step == "CONNECT");
            CHECK(r.error.code == c.code);
            CHECK(r.error.message.find(std::string("node '") + c.node + "'") == 0);
            CHECK(r.error.message.find(c.words) != std::string::npos);
            CHECK(tree(check(c.node)) == tree(before));
            CHECK(has(rig.events(std::string("R-") + c.node, c.node), "CONNECT:STEP_FAILED"));
        }
    }

    TEST_CASE("connection cut mid-upload: final path untouched, no staging leftovers, unlocked") {
        Rig rig;
        const auto before = check("node-0008");
        std::string big(4u << 20, 'x');
        auto r = rig.deploy("node-0008", {rig.artifact("app.jar", big)}, "R-cut");
        CHECK(r.outcome == NodeOutcome::failed_unchanged);
        CHECK(r.failed_step == "TRANSFER");
        const auto after = check("node-0008");
        CHECK(json::value_to<std::string>(after.at("files").at("app.jar").at("sha256")) ==
              json::value_to<std::string>(before.at("files").at("app.jar").at("sha256")));
        CHECK(others(after) == 0);
        CHECK_FALSE(locked(after));
        CHECK(running(after));
        auto ev = rig.events("R-cut", "node-0008");
        CHECK(has(ev, "TRANSFER:STEP_FAILED"));
        CHECK(has(ev, "DISCARD_STAGED:STEP_OK"));
        CHECK(has(ev, "UNLOCK:STEP_OK"));
    }

    TEST_CASE("shutdown hangs: the deadline hits, the node is rolled back") {
        Rig rig;
        const auto before = check("node-0009");
        auto r = rig.deploy("node-0009", {rig.artifact("app.jar", "build 2\n")}, "R-hang");
        CHECK(r.failed_step == "RESTART");
        CHECK(r.error.code == errc::timeout);
        CHECK(r.error.message.find("SHUTDOWN") != std::string::npos);
        CHECK(r.outcome == NodeOutcome::rolled_back);
        const auto after = check("node-0009");
        CHECK(tree(after) == tree(before));
        CHECK(running(after));
        CHECK_FALSE(locked(after));
        shell("pkill -f 'sleep 36[0]0' || true");  // the fleet's hanging shutdown scripts
    }

    TEST_CASE("a second rollout on a locked node is refused by the lock") {
        Rig rig;
        const auto& n = rig.node("node-0001");
        // Someone else holds the lock.
        shell("mkdir '" + n.deploy_path + ".lock' && printf 'owner=other\\nrollout=R-other\\nsince=%s\\n' \"$(date +%s)\" > '" +
              n.deploy_path + ".lock/owner'");
        const auto before = check("node-0001");
        auto r = rig.deploy("node-0001", {rig.artifact("app.jar", "build 3\n")}, "R-locked");
        CHECK(locked(check("node-0001")));  // the other rollout's lock is left alone
        shell("rm -rf '" + n.deploy_path + ".lock'");
        CHECK(r.outcome == NodeOutcome::failed_unchanged);
        CHECK(r.failed_step == "LOCK");
        CHECK(r.error.code == errc::node_locked);
        CHECK(r.error.message.find("R-other") != std::string::npos);
        CHECK(tree(check("node-0001")) == tree(before));
        CHECK(backups(check("node-0001")) == backups(before));
    }

    TEST_CASE("a stale lock is reported as stale, not stolen") {
        Rig rig;
        const auto& n = rig.node("node-0010");
        shell("mkdir '" + n.deploy_path + ".lock' && printf 'owner=ghost\\nrollout=R-ghost\\nsince=1000\\n' > '" +
              n.deploy_path + ".lock/owner'");
        auto r = rig.deploy("node-0010", {rig.artifact("app.jar", "build s\n")}, "R-stale");
        CHECK(r.outcome == NodeOutcome::failed_unchanged);
        CHECK(r.error.code == errc::node_locked);
        CHECK(r.error.message.find("STALE") != std::string::npos);
        CHECK(locked(check("node-0010")));  // still there: a human decides
        shell("rm -rf '" + n.deploy_path + ".lock'");
    }

    TEST_CASE("a missing script fails the pre-check before anything changes") {
        Rig rig;
        Node n = rig.node("node-0010");
        n.startup_cmd = "sh /nonexistent/guardia/startup.sh";
        asio::io_context ioc;
        auto s = rig.settings("R-noscript");
        std::vector<ArtifactSpec> arts{rig.artifact("app.jar", "x\n")};
        const auto before = check("node-0010");
        auto r = guardia::test::run(ioc, deploy_node(n, arts, s), seconds(30));
        CHECK(r.outcome == NodeOutcome::failed_unchanged);
        CHECK(r.failed_step == "PRECHECK");
        CHECK(r.error.code == errc::precheck_failed);
        CHECK(r.error.message.find("/nonexistent/guardia/startup.sh not found") != std::string::npos);
        CHECK(tree(check("node-0010")) == tree(before));
        CHECK(backups(check("node-0010")) == backups(before));
    }

    TEST_CASE("two concurrent rollouts on one node: exactly one gets through") {
        using namespace asio::experimental::awaitable_operators;
        Rig rig;
        asio::io_context ioc;
        auto a = rig.artifact("app.jar", "concurrent A\n");
        auto b = rig.artifact("app.jar", "concurrent B\n");
        auto sa = rig.settings("R-conc-A"), sb = rig.settings("R-conc-B");
        const Node& n = rig.node("node-0001");
        std::vector<ArtifactSpec> va{a}, vb{b};
        auto [ra, rb] = guardia::test::run(ioc, [&]() -> asio::awaitable<std::tuple<NodeReport, NodeReport>> {
            co_return co_await (deploy_node(n, va, sa) && deploy_node(n, vb, sb));
        }(), seconds(120));
        const int ok = (ra.outcome == NodeOutcome::deployed) + (rb.outcome == NodeOutcome::deployed);
        CHECK(ok == 1);
        const auto& loser = ra.outcome == NodeOutcome::deployed ? rb : ra;
        CHECK(loser.failed_step == "LOCK");
        CHECK_FALSE(locked(check("node-0001")));
    }

    TEST_CASE("a sanitizer hit is refused before anything is sent") {
        Rig rig;
        Node evil = rig.node("node-0001");
        evil.startup_cmd = "sh -c 'rm -rf /'";
        asio::io_context ioc;
        auto s = rig.settings("R-evil");
        std::vector<ArtifactSpec> arts{rig.artifact("app.jar", "x\n")};
        const auto before = check("node-0001");
        auto r = guardia::test::run(ioc, deploy_node(evil, arts, s), seconds(30));
        CHECK(r.outcome == NodeOutcome::failed_unchanged);
        CHECK(r.failed_step == "VALIDATE");
        CHECK(r.error.code == errc::security_violation);
        auto ev = rig.events("R-evil", "node-0001");
        CHECK(has(ev, "VALIDATE:SECURITY_VIOLATION"));
        CHECK_FALSE(has(ev, "CONNECT:STEP_START"));  // nothing was sent
        CHECK(tree(check("node-0001")) == tree(before));
    }

    TEST_CASE("backup retention keeps exactly N") {
        Rig rig;
        for (int i = 0; i < 5; ++i) {
            auto s = rig.settings("R-keep-" + std::to_string(i));
            s.keep_backups = 2;
            auto r = rig.deploy("node-0010", {rig.artifact("app.jar", "build " + std::to_string(i) + "\n")},
                                s.rollout_id, &s);
            REQUIRE_MESSAGE(r.outcome == NodeOutcome::deployed, r.error.message);
        }
        CHECK(backups(check("node-0010")) == 2);
    }

    TEST_CASE("artifact bytes: held in memory once, or streamed from the file when too large") {
        Rig rig;
        // In memory (the default for a small artifact): the rollout ships what it hashed, even
        // if the local file changes afterwards.
        auto held = rig.artifact("app.jar", "app build 3\n");
        REQUIRE(held.bytes != nullptr);
        CHECK(held.bytes->sha256() == held.sha256);
        { std::ofstream(held.local_path, std::ios::binary) << "changed after describe\n"; }
        auto r = rig.deploy("node-0002", {held}, "R-held");
        CHECK_MESSAGE(r.outcome == NodeOutcome::deployed, r.error.message);
        CHECK(json::value_to<std::string>(check("node-0002").at("files").at("app.jar").at("sha256")) ==
              held.sha256);

        // Too large to hold (a limit of 0 bytes here): each upload reads the file, verified
        // remotely against the digest taken at describe time.
        const auto dir = rig.tmp.path() + "/streamed";
        std::filesystem::create_directories(dir);
        { std::ofstream(dir + "/app.jar", std::ios::binary) << "app build 4\n"; }
        auto streamed = describe_artifact(dir + "/app.jar", 0);
        REQUIRE(streamed.has_value());
        CHECK(streamed->bytes == nullptr);
        r = rig.deploy("node-0002", {*streamed}, "R-streamed");
        CHECK_MESSAGE(r.outcome == NodeOutcome::deployed, r.error.message);
        const auto deployed = check("node-0002");
        CHECK(json::value_to<std::string>(deployed.at("files").at("app.jar").at("sha256")) ==
              streamed->sha256);
        // A streamed file that changed since: the remote check refuses it, the node is untouched.
        { std::ofstream(dir + "/app.jar", std::ios::binary) << "app build 5, not described\n"; }
        r = rig.deploy("node-0002", {*streamed}, "R-streamed-changed");
        CHECK(r.outcome == NodeOutcome::failed_unchanged);
        CHECK(r.failed_step == "TRANSFER");
        CHECK(r.error.code == errc::checksum_mismatch);
        const auto after = check("node-0002");
        CHECK(tree(after) == tree(deployed));
        CHECK(others(after) == 0);
        CHECK_FALSE(locked(after));
    }

    TEST_CASE("no secret reaches the audit log") {
        Rig rig;
        // A password-authenticated run whose password is a canary (refused: wrong password).
        const std::string canary = "canary-AUDIT-pw-1234";
        const std::string pwfile = rig.tmp.path() + "/passwords.json";
        { std::ofstream(pwfile) << "{\"node-pw\": \"" << canary << "\"}"; }
        std::filesystem::permissions(pwfile, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
        rig.credentials = *CredentialStore::open(pwfile);
        Node n = rig.node("node-0001");
        n.auth = NodeAuth();
        n.auth.password_ref = "node-pw";
        asio::io_context ioc;
        auto s = rig.settings("R-canary");
        std::vector<ArtifactSpec> arts{rig.artifact("app.jar", "x\n")};
        auto r = guardia::test::run(ioc, deploy_node(n, arts, s), seconds(30));
        CHECK(r.outcome == NodeOutcome::failed_unchanged);
        CHECK(r.error.code == errc::auth_failed);
        CHECK(r.error.message.find(canary) == std::string::npos);
        rig.events("R-canary", "node-0001");  // flushes
        CHECK(shell("sqlite3 '" + rig.db_path + "' 'select count(*) from audit_log where detail like \"%" + canary + "%\"'") == "0\n");
        CHECK(shell("grep -c '" + canary + "' '" + rig.db_path + "' || true") == "0\n");
    }

    TEST_CASE("a crash mid-deploy: the lock names the backup, recover_node restores the node") {
        Rig rig;
        const Node& n = rig.node("node-0010");
        const auto before = check("node-0010");
        std::vector<ArtifactSpec> arts{rig.artifact("app.jar", "build crash\n")};
        std::string seen_backup;
        {
            // Everything on this io_context dies with it mid-HEALTH: what kill -9 leaves.
            asio::io_context ioc;
            auto s = rig.settings("R-crash");
            s.on_backup = [&](const std::string&, const std::string& b) { seen_backup = b; };
            s.on_step = [&](const std::string&, const std::string& step) {
                if (step == "HEALTH") stop_after_intent(ioc, *rig.audit);
            };
            asio::co_spawn(ioc, deploy_node(n, arts, s), asio::detached);
            ioc.run_for(seconds(60));
            settle(*rig.audit);  // before ioc goes
        }
        REQUIRE_FALSE(seen_backup.empty());
        const auto mid = check("node-0010");
        REQUIRE(locked(mid));
        CHECK(json::value_to<std::string>(mid.at("files").at("app.jar").at("sha256")) == arts[0].sha256);
        CHECK(shell("cat '" + n.deploy_path + ".lock/owner'").find("backup=" + seen_backup + "\n") !=
              std::string::npos);

        // A restarted service recovers it; the store's copy of the backup path is not needed.
        asio::io_context ioc;
        auto r = guardia::test::run(ioc, recover_node(n, arts, "", rig.settings("R-crash")), seconds(60));
        CHECK_MESSAGE(r.outcome == NodeOutcome::rolled_back, r.error.message);
        CHECK(r.backup_path == seen_backup);
        CHECK(r.lock_released);
        const auto after = check("node-0010");
        CHECK(tree(after) == tree(before));
        CHECK(running(after));
        CHECK_FALSE(locked(after));
        CHECK(others(after) == 0);
        auto ev = rig.events("R-crash", "node-0010");
        CHECK(has(ev, "RECOVER_INSPECT:STEP_OK"));
        CHECK(has(ev, "RESTORE:STEP_OK"));
        CHECK(has(ev, "SUMMARY:RECOVERED"));

        // Nothing of this rollout is left on the node: a second recovery changes nothing.
        auto again = guardia::test::run(ioc, recover_node(n, arts, seen_backup, rig.settings("R-crash")),
                                        seconds(60));
        CHECK(again.outcome == NodeOutcome::failed_unchanged);
        CHECK_FALSE(again.lock_released);
        CHECK(tree(check("node-0010")) == tree(before));
    }

    TEST_CASE("recovery records a node that finished before the crash as deployed, untouched") {
        Rig rig;
        const Node& n = rig.node("node-0010");
        std::vector<ArtifactSpec> arts{rig.artifact("app.jar", "build finished\n")};
        auto d = rig.deploy("node-0010", arts, "R-finished");
        REQUIRE(d.outcome == NodeOutcome::deployed);
        const auto deployed = check("node-0010");
        asio::io_context ioc;
        auto r = guardia::test::run(ioc, recover_node(n, arts, d.backup_path, rig.settings("R-finished")),
                                    seconds(60));
        CHECK(r.outcome == NodeOutcome::deployed);
        CHECK_FALSE(r.lock_released);
        const auto after = check("node-0010");
        CHECK(tree(after) == tree(deployed));
        CHECK_FALSE(locked(after));
    }

    TEST_CASE("LOCK reclaims a lock of its own rollout only when asked to") {
        Rig rig;
        const Node& n = rig.node("node-0010");
        std::vector<ArtifactSpec> arts{rig.artifact("app.jar", "build own\n")};
        auto d = rig.deploy("node-0010", arts, "R-own");
        REQUIRE(d.outcome == NodeOutcome::deployed);
        shell("mkdir '" + n.deploy_path + ".lock' && printf 'owner=dead\\nrollout=R-own\\nsince=%s\\n' \"$(date +%s)\" > '" +
              n.deploy_path + ".lock/owner' && chown -R '" + n.user + "' '" + n.deploy_path + ".lock'");  // as the dead process left it
        asio::io_context ioc;
        auto refused = guardia::test::run(ioc, rollback_node(n, d.backup_path, rig.settings("R-own")), seconds(60));
        CHECK(refused.failed_step == "LOCK");
        CHECK(locked(check("node-0010")));
        auto s = rig.settings("R-own");
        s.reclaim_own_lock = true;
        auto r = guardia::test::run(ioc, rollback_node(n, d.backup_path, s), seconds(60));
        CHECK_MESSAGE(r.outcome == NodeOutcome::rolled_back, r.error.message);
        CHECK_FALSE(locked(check("node-0010")));
        // Another rollout's lock is never reclaimed.
        shell("mkdir '" + n.deploy_path + ".lock' && printf 'owner=x\\nrollout=R-else\\nsince=%s\\n' \"$(date +%s)\" > '" +
              n.deploy_path + ".lock/owner'");
        auto other = guardia::test::run(ioc, rollback_node(n, d.backup_path, s), seconds(60));
        CHECK(other.failed_step == "LOCK");
        CHECK(locked(check("node-0010")));
        shell("rm -rf '" + n.deploy_path + ".lock'");
    }

    // --- remote file operations that cannot be fooled -------------------------------------

    TEST_CASE("a symlinked deploy_path (current -> release): rollback restores the real directory, the link stays") {
        Rig rig;
        Node n = rig.node("node-0002");
        const std::string base = std::filesystem::path(n.deploy_path).parent_path().string();
        const std::string link = base + "/current";
        // The Capistrano layout: `current` is a relative link to the release the service runs
        // (here the fleet's own `app`, which its health server and scripts look at).
        Cleanup guard{"rm -rf -- '" + link + "' '" + link + ".lock' '" + link + ".bak_'* '" + base +
                      "/app.guardia-restore'"};
        shell("ln -sfn app '" + link + "' && chown -h " + n.user + ": '" + link + "'");
        n.deploy_path = link;
        const auto before = check("node-0002");
        const auto real_before = listing(base + "/app");
        auto r = rig.deploy(n, {rig.artifact("app.jar", bad_content("GUARDIA_FAULT=unhealthy"))},
                            rig.settings("R-link"));
        CHECK(r.failed_step == "HEALTH");
        CHECK_MESSAGE(r.outcome == NodeOutcome::rolled_back, r.rollback_error);
        // The backup holds the real directory's files, not a second link to the live ones.
        CHECK(shell("[ -d '" + r.backup_path + "' ] && [ ! -L '" + r.backup_path + "' ] && echo dir") == "dir\n");
        CHECK(listing(r.backup_path) == real_before);
        // The real directory is v1 again, byte for byte; the link is still a link to `app`.
        CHECK(listing(base + "/app") == real_before);
        CHECK(tree(check("node-0002")) == tree(before));
        CHECK(shell("[ -L '" + link + "' ] && readlink '" + link + "'") == "app\n");
        CHECK(running(check("node-0002")));
        CHECK_FALSE(exists(link + ".lock"));
        CHECK_FALSE(exists(base + "/app.guardia-restore"));
        CHECK_FALSE(exists(link + ".guardia-restore"));
    }

    TEST_CASE("a symlinked deploy_path: crash recovery restores the real directory the same way") {
        Rig rig;
        Node n = rig.node("node-0002");
        const std::string base = std::filesystem::path(n.deploy_path).parent_path().string();
        const std::string link = base + "/current";
        Cleanup guard{"rm -rf -- '" + link + "' '" + link + ".lock' '" + link + ".bak_'* '" + base +
                      "/app.guardia-restore'"};
        shell("ln -sfn app '" + link + "' && chown -h " + n.user + ": '" + link + "'");
        n.deploy_path = link;
        const auto real_before = listing(base + "/app");
        std::vector<ArtifactSpec> arts{rig.artifact("app.jar", "build crash via link\n")};
        std::string seen_backup;
        {
            asio::io_context ioc;  // dies mid-HEALTH: what kill -9 leaves
            auto s = rig.settings("R-link-crash");
            s.on_backup = [&](const std::string&, const std::string& b) { seen_backup = b; };
            s.on_step = [&](const std::string&, const std::string& step) {
                if (step == "HEALTH") stop_after_intent(ioc, *rig.audit);
            };
            asio::co_spawn(ioc, deploy_node(n, arts, s), asio::detached);
            ioc.run_for(seconds(60));
            settle(*rig.audit);  // before ioc goes
        }
        REQUIRE_FALSE(seen_backup.empty());
        REQUIRE(listing(base + "/app") != real_before);  // the new build is live
        asio::io_context ioc;
        auto r = guardia::test::run(ioc, recover_node(n, arts, "", rig.settings("R-link-crash")), seconds(60));
        CHECK_MESSAGE(r.outcome == NodeOutcome::rolled_back, r.error.message);
        CHECK(r.backup_path == seen_backup);
        CHECK(listing(base + "/app") == real_before);
        CHECK(shell("[ -L '" + link + "' ] && readlink '" + link + "'") == "app\n");
        CHECK(running(check("node-0002")));
        CHECK_FALSE(exists(link + ".lock"));
    }

    TEST_CASE("pruning removes only Guardia's own backups; look-alike names survive") {
        Rig rig;
        const Node& n = rig.node("node-0010");
        const std::string d = n.deploy_path;
        const std::string base = std::filesystem::path(d).parent_path().string();
        // Names a user or another tool may keep beside the deploy path. The glob "$d".bak_*
        // matches the first four; none is a backup Guardia made.
        const std::vector<std::string> lookalikes = {
            d + ".bak_important", d + ".bak_20200101_000000.keep", d + ".bak_20200101_000000_old",
            d + ".bak_19990101_000000",  // a symlink that happens to carry a backup's name
            d + ".bak.important", base + "/app.guardia-backup-notes"};
        // Real old backups (Guardia's exact pattern, with and without the same-second suffix).
        const std::vector<std::string> old_backups = {d + ".bak_20200101_000000", d + ".bak_20200101_000000_2"};
        std::string rm = "rm -rf --";
        for (const auto& p : lookalikes) rm += " '" + p + "'";
        for (const auto& p : old_backups) rm += " '" + p + "'";
        Cleanup guard{rm + " '" + base + "/keep-me'"};
        shell("mkdir -p '" + base + "/keep-me' && echo precious > '" + base + "/keep-me/data'"
              " && mkdir '" + lookalikes[0] + "' && echo precious > '" + lookalikes[0] + "/data'"
              " && echo note > '" + lookalikes[1] + "' && mkdir '" + lookalikes[2] + "'"
              " && ln -s keep-me '" + lookalikes[3] + "' && echo x > '" + lookalikes[4] + "'"
              " && echo x > '" + lookalikes[5] + "' && mkdir '" + old_backups[0] + "' '" + old_backups[1] + "'"
              " && chown -hR " + n.user + ": '" + base + "/keep-me'" + rm.substr(9));
        for (int i = 0; i < 3; ++i) {
            auto s = rig.settings("R-prune-" + std::to_string(i));
            s.keep_backups = 2;
            auto r = rig.deploy("node-0010", {rig.artifact("app.jar", "prune build " + std::to_string(i) + "\n")},
                                s.rollout_id, &s);
            REQUIRE_MESSAGE(r.outcome == NodeOutcome::deployed, r.error.message);
        }
        for (const auto& p : lookalikes) {
            CAPTURE(p);
            CHECK(exists(p));
        }
        CHECK(shell("cat '" + base + "/keep-me/data' '" + lookalikes[0] + "/data'") == "precious\nprecious\n");
        for (const auto& p : old_backups) {
            CAPTURE(p);
            CHECK_FALSE(exists(p));
        }
        // Exactly the retention limit of Guardia's own backups (real directories) is left.
        CHECK(shell("cd '" + base + "' && find . -maxdepth 1 -type d -regextype posix-extended -regex "
                    "'\\./app\\.bak_[0-9]{8}_[0-9]{6}(_[0-9]+)?' | wc -l") == "2\n");
    }

    TEST_CASE("an artifact whose name is a directory on the node is refused, never nested inside it") {
        Rig rig;
        const Node& n = rig.node("node-0002");
        const auto before = check("node-0002");
        // `conf` is a directory in the fleet's app: a plain `mv staged conf` would put the
        // staged file inside it and report success.
        auto r = rig.deploy("node-0002", {rig.artifact("conf", "a file named conf\n")}, "R-nest");
        CHECK(r.outcome != NodeOutcome::deployed);
        CHECK(r.outcome == NodeOutcome::failed_unchanged);
        CHECK(r.failed_step == "PRECHECK");
        CHECK(r.error.message.find("is a directory") != std::string::npos);
        CHECK(shell("find '" + n.deploy_path + "' -name '.guardia-stage.*' | wc -l") == "0\n");
        CHECK(tree(check("node-0002")) == tree(before));
    }

    TEST_CASE("a directory appearing at the destination after the pre-check: activation fails, rolled back, nothing nested") {
        Rig rig;
        const Node& n = rig.node("node-0002");
        const auto before = check("node-0002");
        const std::string dest = n.deploy_path + "/plugins";
        Cleanup guard{"rm -rf -- '" + dest + "'"};
        auto s = rig.settings("R-nest-late");
        // Between the pre-check and the rename, something creates a directory of that name.
        s.on_step = [&](const std::string&, const std::string& step) {
            if (step == "SHUTDOWN") shell("mkdir '" + dest + "' && chown " + n.user + ": '" + dest + "'");
        };
        auto r = rig.deploy(n, {rig.artifact("plugins", "a file named plugins\n")}, s);
        CHECK(r.outcome == NodeOutcome::rolled_back);
        CHECK(r.failed_step == "RESTART");
        CHECK(r.error.message.find("ACTIVATE") != std::string::npos);
        CHECK(shell("find '" + n.deploy_path + "' -name '.guardia-stage.*' | wc -l") == "0\n");
        CHECK(tree(check("node-0002")) == tree(before));
        CHECK(running(check("node-0002")));
    }

    TEST_CASE("artifact names with spaces and $(...) are data, never code, in every remote command") {
        Rig rig;
        const Node& n = rig.node("node-0010");
        // A name `guardia deploy --artifact` accepts (any file name). If any command put it
        // unquoted inside double quotes, the shell would run the substitution and leave `pwned`.
        const std::string name = "my app$(cd \"$d\";touch pwned).jar";
        Cleanup guard{"cd '" + n.deploy_path + "' && rm -f -- pwned ./my\\ app*"};
        auto art = rig.artifact(name, "build with an odd name\n");
        auto d = rig.deploy("node-0010", {art}, "R-odd-name");
        REQUIRE_MESSAGE(d.outcome == NodeOutcome::deployed, d.error.message);
        CHECK(shell("sha256sum < '" + n.deploy_path + "/my app$(cd \"$d\";touch pwned).jar'").substr(0, 64) == art.sha256);
        CHECK_FALSE(exists(n.deploy_path + "/pwned"));
        // Crash recovery inspects what is deployed by that name: it must see the new build.
        asio::io_context ioc;
        auto r = guardia::test::run(ioc, recover_node(n, {art}, d.backup_path, rig.settings("R-odd-name")),
                                    seconds(60));
        CHECK_FALSE(exists(n.deploy_path + "/pwned"));
        CHECK_MESSAGE(r.outcome == NodeOutcome::deployed, r.error.message);

        // Names that are not one file name in the deploy path are refused before anything is sent.
        for (std::string bad : {"../escape.jar", "sub/dir.jar", "..", ".", "", "two\nlines"}) {
            CAPTURE(bad);
            ArtifactSpec a = art;
            a.file_name = bad;
            auto v = rig.deploy(n, {a}, rig.settings("R-bad-name"));
            CHECK(v.outcome == NodeOutcome::failed_unchanged);
            CHECK(v.failed_step == "VALIDATE");
            CHECK(v.error.code == errc::invalid_argument);
        }
    }

    TEST_CASE("a private key readable by group or others is refused locally; nothing is sent") {
        Rig rig;
        Node n = rig.node("node-0001");
        const std::string key = rig.tmp.path() + "/loose_key";
        shell("cp '" + fleet().key() + "' '" + key + "' && chmod 0644 '" + key + "'");
        n.auth.key_file = key;
        // The node's address is a listener of this test: any connection attempt would show.
        asio::io_context lioc;
        asio::ip::tcp::acceptor listener(lioc, {asio::ip::make_address("127.0.0.1"), 0});
        listener.non_blocking(true);
        n.ssh_port = listener.local_endpoint().port();
        rig.credentials = *CredentialStore::open("");
        auto r = rig.deploy(n, {rig.artifact("app.jar", "x\n")}, rig.settings("R-loose-key"));
        CHECK(r.outcome == NodeOutcome::failed_unchanged);
        CHECK(r.failed_step == "CONNECT");
        CHECK(r.error.code == errc::invalid_argument);
        CHECK(r.error.message.find("node 'node-0001'") == 0);
        CHECK(r.error.message.find("UNPROTECTED PRIVATE KEY FILE") != std::string::npos);
        CHECK(r.error.message.find(key) != std::string::npos);
        CHECK(r.error.message.find("0644") != std::string::npos);
        boost::system::error_code ec;
        asio::ip::tcp::socket peer(lioc);
        listener.accept(peer, ec);
        CHECK(ec == asio::error::would_block);  // no TCP connection was even attempted

        // Group-readable is refused too; the owner's own bits are fine, as in OpenSSH.
        shell("chmod 0640 '" + key + "'");
        auto g = ssh::PrivateKey::load(key);
        REQUIRE_FALSE(g.has_value());
        CHECK(g.error().message.find("0640") != std::string::npos);
        shell("chmod 0400 '" + key + "'");
        CHECK(ssh::PrivateKey::load(key).has_value());
    }

    TEST_CASE("Guardia's own scripts are not run through the sanitizer: a deploy path with a flagged word deploys") {
        // The sanitizer judges operator text. Guardia's internal scripts hold the deploy path
        // (quoted); a legitimate directory named like one of its words must not block them.
        Rig rig;
        Node n = rig.node("node-0002");
        const std::string base = std::filesystem::path(n.deploy_path).parent_path().string();
        Cleanup guard{"rm -rf -- '" + base + "/format'"};
        shell("mkdir '" + base + "/format' && cp -a '" + n.deploy_path + "' '" + base + "/format/app' && chown -R " +
              n.user + ": '" + base + "/format'");
        n.deploy_path = base + "/format/app";
        auto art = rig.artifact("app.jar", "build in format/app\n");
        auto r = rig.deploy(n, {art}, rig.settings("R-format"));
        CHECK_MESSAGE(r.outcome == NodeOutcome::deployed, r.error.message);
        CHECK(shell("sha256sum < '" + n.deploy_path + "/app.jar'").substr(0, 64) == art.sha256);
        // Operator text is still judged: by validate() before anything is sent.
        n.startup_cmd = "sh -c 'rm -rf /'";
        auto bad = rig.deploy(n, {art}, rig.settings("R-format-evil"));
        CHECK(bad.error.code == errc::security_violation);
        CHECK(bad.failed_step == "VALIDATE");
    }
}
