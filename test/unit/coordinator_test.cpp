// The service's coordinator without HTTP: tasks, staging, triggers, verdicts and the approval
// rules through its ServiceResult API, on a real store. The only node is 127.0.0.1 port 1
// (nothing listens there), so a rollout fails at CONNECT without touching anything.
#include "guardia/service/coordinator.hpp"

#include "../support/fleet.hpp"
#include "guardia/deploy/credential_store.hpp"
#include "guardia/store/audit_writer.hpp"
#include "guardia/store/database.hpp"

#include <doctest/doctest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>

#include <fstream>
#include <functional>

using namespace guardia::service;
namespace asio = boost::asio;
namespace json = boost::json;

namespace {

struct Fixture {
    guardia::test::TempDir dir;
    asio::io_context ioc{1};
    std::unique_ptr<guardia::store::AuditWriter> audit;
    std::unique_ptr<Coordinator> coordinator;

    Fixture() {
        const std::string db = dir.file("guardia.db");
        audit = std::make_unique<guardia::store::AuditWriter>(db);
        audit->start();
        DeployServiceDeps deps;
        deps.service.state_dir = dir.file("state");
        deps.db_path = db;
        deps.audit = audit.get();
        deps.credentials = guardia::deploy::CredentialStore::open("").value();
        deps.owner = "guardia@test:1";
        deps.engine.pipeline.connect_timeout = std::chrono::milliseconds(2000);
        coordinator = std::make_unique<Coordinator>(ioc.get_executor(), std::move(deps));
    }
    ~Fixture() {
        coordinator.reset();
        audit->stop();
    }

    // Runs one coroutine on the loop to its end (rethrowing what escapes it).
    void run(std::function<asio::awaitable<void>()> body) {
        std::exception_ptr failed;
        asio::co_spawn(ioc, body(), [&](std::exception_ptr e) { failed = e; });
        ioc.restart();
        ioc.run();
        if (failed) std::rethrow_exception(failed);
    }

    static Coordinator::StageRequest bytes(const std::string& sr, const std::string& name,
                                           const std::string& sha, std::string data,
                                           bool caller_sent = true) {
        Coordinator::StageRequest s;
        s.sr_id = sr;
        s.name = name;
        s.sha256 = sha;
        s.caller_sent_bytes = caller_sent;
        s.write = [data](const std::string& tmp) -> guardia::Result<std::int64_t> {
            std::ofstream(tmp, std::ios::binary) << data;
            return static_cast<std::int64_t>(data.size());
        };
        return s;
    }
};

const std::string hello_sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

json::object unreachable_inventory() {
    return json::parse(R"({"nodes": [{"name": "n1", "host": "127.0.0.1", "ssh_port": 1,
        "user": "deploy", "auth": {"agent": true}, "deploy_path": "/srv/app", "tier": 1,
        "inst_id": "I1", "system_name": "sys", "requires_restart": false,
        "health": {"port": 1, "path": "/", "timeout_s": 1, "interval_s": 1}}]})")
        .as_object();
}

}  // namespace

TEST_SUITE_BEGIN("coordinator");

TEST_CASE("coordinator: tasks, staging and a trigger's approval, with service errors") {
    Fixture f;
    f.run([&]() -> asio::awaitable<void> {
        Coordinator& c = *f.coordinator;
        CHECK((co_await c.task("SR-1")).error().code == ServiceErrc::not_found);
        Coordinator::NewTask t;
        t.sr_id = "SR-1";
        t.inst_id = "I1";
        t.system_name = "sys";
        t.requester = "alice";
        auto created = co_await c.create_task(t, "approvals");
        REQUIRE(created.has_value());
        CHECK(created->task.status == "CREATED");
        CHECK((co_await c.create_task(t, "approvals")).error().code == ServiceErrc::conflict);

        // staging: a bad digest is the caller's error; a mismatch tells the digest only to
        // whoever sent the bytes
        CHECK((co_await c.stage(Fixture::bytes("SR-1", "app", "xyz", "hello"), "approvals"))
                  .error()
                  .code == ServiceErrc::bad_request);
        auto told = co_await c.stage(Fixture::bytes("SR-1", "app", std::string(64, '0'), "hello"),
                                     "approvals");
        CHECK(told.error().code == ServiceErrc::checksum_mismatch);
        CHECK(told.error().message.find(hello_sha) != std::string::npos);
        auto untold = co_await c.stage(
            Fixture::bytes("SR-1", "app", std::string(64, '0'), "hello", false), "approvals");
        CHECK(untold.error().code == ServiceErrc::checksum_mismatch);
        CHECK(untold.error().message.find(hello_sha) == std::string::npos);

        // a trigger before anything is staged, by the requester, or without an inventory
        Coordinator::TriggerRequest tr;
        tr.sr_id = "SR-1";
        tr.approver = "bob";
        CHECK((co_await c.trigger(tr, "approvals")).error().code == ServiceErrc::conflict);
        REQUIRE((co_await c.stage(Fixture::bytes("SR-1", "app", hello_sha, "hello"), "approvals")).has_value());
        tr.approver = " ALICE ";
        CHECK((co_await c.trigger(tr, "approvals")).error().code == ServiceErrc::self_approval);
        tr.approver = "bob";
        auto no_nodes = co_await c.trigger(tr, "approvals");
        CHECK(no_nodes.error().code == ServiceErrc::conflict);
        CHECK(no_nodes.error().message.find("no inventory node") != std::string::npos);
        REQUIRE((co_await c.import_inventory(unreachable_inventory(), "ops")).has_value());
        tr.expected = ArtifactSet{{"app", std::string(64, '1')}};
        CHECK((co_await c.trigger(tr, "approvals")).error().code == ServiceErrc::approval_mismatch);
        tr.expected = ArtifactSet{{"app", hello_sha}};

        // the trigger runs (and fails at CONNECT): the approval is recorded with its set
        auto accepted = co_await c.trigger(tr, "approvals");
        REQUIRE(accepted.has_value());
        CHECK(accepted->status == 202);
        CHECK((co_await c.trigger(tr, "approvals")).error().code == ServiceErrc::conflict);
        auto done = co_await c.wait(accepted->work);
        CHECK(done.at("status") == "FAILED_ROLLBACK");
        auto after = co_await c.task("SR-1");
        REQUIRE(after.has_value());
        CHECK(after->task.approver == "bob");
        auto payload = json::parse(after->task.payload).as_object();
        CHECK(payload.at("approved_artifacts").as_object().at("app").as_string() == hello_sha);

        // no verdict outside PENDING_PM_VALIDATION
        Coordinator::VerdictRequest v;
        v.sr_id = "SR-1";
        v.pm_id = "carol";
        v.accepted = true;
        CHECK((co_await c.verdict(v, "pm")).error().code == ServiceErrc::conflict);

        // re-staging voids the approval
        REQUIRE((co_await c.stage(Fixture::bytes("SR-1", "app", hello_sha, "hello"), "approvals")).has_value());
        auto voided = co_await c.task("SR-1");
        REQUIRE(voided.has_value());
        CHECK(voided->task.approver.empty());
        CHECK_FALSE(json::parse(voided->task.payload).as_object().contains("approved_artifacts"));
        CHECK(c.claims().size() == 0);  // a failed rollout holds no node
        co_return;
    });
    auto db = guardia::store::Database::open_read_only(f.dir.file("guardia.db"));
    REQUIRE(db.has_value());
    auto rows = db->audit_for("SR-1", 0, 1000);
    REQUIRE(rows.has_value());
    bool voided = false, created_by = false;
    for (const auto& r : *rows) {
        voided = voided || (r.event == "APPROVAL_VOIDED" && r.principal == "approvals");
        created_by = created_by || (r.event == "TASK_CREATED" && r.principal == "approvals");
    }
    CHECK(voided);
    CHECK(created_by);
}

TEST_SUITE_END();
