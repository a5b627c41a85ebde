// The web console's pure parts (service/console.hpp): the embedded files, the Cookie header,
// the CSRF / Origin decision and the session store's expiry, idle expiry and cap.
#include "guardia/service/console.hpp"

#include <doctest/doctest.h>

#include <set>
#include <string>
#include <vector>

using namespace guardia::service;
namespace bh = boost::beast::http;

namespace {

guardia::http::Request request(bh::verb method, std::string target = "/api/tasks") {
    guardia::http::Request r{method, target, 11};
    r.set(bh::field::host, "127.0.0.1:8080");
    return r;
}

Principal principal(std::string name) {
    Principal p;
    p.name = std::move(name);
    p.roles.add(Role::read);
    return p;
}

}  // namespace

TEST_CASE("console assets: index.html is embedded, types by extension") {
    REQUIRE(find_ui_asset("index.html") != nullptr);
    CHECK(find_ui_asset("index.html")->bytes.find("<html") != std::string_view::npos);
    CHECK(find_ui_asset("nope.js") == nullptr);
    CHECK(ui_content_type("app.js") == "text/javascript; charset=utf-8");
    CHECK(ui_content_type("style.css") == "text/css; charset=utf-8");
    CHECK(ui_content_type("logo.svg") == "image/svg+xml");
    CHECK(ui_content_type("index.html") == "text/html; charset=utf-8");
    CHECK(ui_content_type("README").empty());
    CHECK(ui_content_type("x.map").empty());
}

TEST_CASE("cookie_value: pairs, blanks, quotes, several headers, first wins") {
    auto r = request(bh::verb::get);
    CHECK_FALSE(cookie_value(r, "guardia_session").has_value());
    r.insert(bh::field::cookie, "a=1; guardia_session=abc ;b=2");
    REQUIRE(cookie_value(r, "guardia_session").has_value());
    CHECK(*cookie_value(r, "guardia_session") == "abc");
    CHECK(*cookie_value(r, "b") == "2");
    CHECK_FALSE(cookie_value(r, "guardia").has_value());      // no prefix match
    CHECK_FALSE(cookie_value(r, "session").has_value());      // no suffix match
    auto q = request(bh::verb::get);
    q.insert(bh::field::cookie, "junk; x_guardia_session=evil");
    q.insert(bh::field::cookie, "guardia_session=\"v1\"; guardia_session=v2");
    REQUIRE(cookie_value(q, "guardia_session").has_value());
    CHECK(*cookie_value(q, "guardia_session") == "v1");
}

TEST_CASE("csrf_check: safe methods pass; state changes need the header and our origin") {
    const std::string csrf(64, 'a');
    CHECK(csrf_check(request(bh::verb::get), csrf, false) == CsrfVerdict::ok);
    CHECK(csrf_check(request(bh::verb::head), csrf, false) == CsrfVerdict::ok);
    for (auto m : {bh::verb::post, bh::verb::put, bh::verb::delete_, bh::verb::patch}) {
        auto r = request(m);
        CHECK(csrf_check(r, csrf, false) == CsrfVerdict::missing_token);
        r.set(csrf_header, std::string(64, 'b'));
        CHECK(csrf_check(r, csrf, false) == CsrfVerdict::wrong_token);
        r.set(csrf_header, csrf.substr(1));
        CHECK(csrf_check(r, csrf, false) == CsrfVerdict::wrong_token);
        r.set(csrf_header, csrf);
        CHECK(csrf_check(r, csrf, false) == CsrfVerdict::ok);
        r.set(bh::field::origin, "http://127.0.0.1:8080");
        CHECK(csrf_check(r, csrf, false) == CsrfVerdict::ok);
        CHECK(csrf_check(r, csrf, true) == CsrfVerdict::foreign_origin);  // we speak https
        r.set(bh::field::origin, "https://127.0.0.1:8080");
        CHECK(csrf_check(r, csrf, true) == CsrfVerdict::ok);
        for (const char* o : {"null", "http://evil.example", "http://127.0.0.1:8081",
                              "http://127.0.0.1:8080.evil.example", ""}) {
            r.set(bh::field::origin, o);
            CHECK_MESSAGE(csrf_check(r, csrf, false) == CsrfVerdict::foreign_origin, o);
        }
    }
    // An empty session csrf (the sign-in's origin check) never matches a header.
    auto r = request(bh::verb::post);
    r.set(csrf_header, "");
    CHECK(csrf_check(r, "", false) == CsrfVerdict::wrong_token);
}

TEST_CASE("sessions: random cookies and csrf values, found by cookie only, closed") {
    SessionStore store;
    auto a = store.open(principal("pm"), 1000);
    auto b = store.open(principal("ops"), 1000);
    CHECK(a.cookie.size() == 64);
    CHECK(a.session.csrf.size() == 64);
    std::set<std::string> distinct{a.cookie, b.cookie, a.session.csrf, b.session.csrf};
    CHECK(distinct.size() == 4);
    REQUIRE(store.find(a.cookie, 2000).has_value());
    CHECK(store.find(a.cookie, 2000)->who.name == "pm");
    CHECK(store.find(b.cookie, 2000)->who.name == "ops");
    CHECK_FALSE(store.find(a.session.csrf, 2000).has_value());  // the csrf value is no cookie
    CHECK_FALSE(store.find("", 2000).has_value());
    CHECK_FALSE(store.find(std::string(64, 'g'), 2000).has_value());
    CHECK(store.close(a.cookie));
    CHECK_FALSE(store.close(a.cookie));
    CHECK_FALSE(store.find(a.cookie, 2000).has_value());
    CHECK(store.size() == 1);
}

TEST_CASE("sessions: idle expiry, absolute expiry, the cap evicts the oldest") {
    SessionLimits l;
    l.max_sessions = 3;
    l.max_age_ms = 10'000;
    l.idle_ms = 4'000;
    SessionStore store(l);
    auto s = store.open(principal("pm"), 0);
    CHECK(s.session.expires_ms == 4'000);
    // Used every 3 s it lives until its absolute end.
    for (std::int64_t t = 3'000; t < 10'000; t += 3'000) {
        auto f = store.find(s.cookie, t);
        REQUIRE(f.has_value());
        CHECK(f->expires_ms == std::min<std::int64_t>(10'000, t + 4'000));
    }
    CHECK_FALSE(store.find(s.cookie, 10'000).has_value());  // 8 h (here 10 s) after sign-in
    CHECK(store.size() == 0);
    auto idle = store.open(principal("pm"), 20'000);
    CHECK(store.find(idle.cookie, 23'999).has_value());
    CHECK_FALSE(store.find(idle.cookie, 28'000).has_value());  // idle 4 s
    auto o1 = store.open(principal("a"), 30'000);
    auto o2 = store.open(principal("b"), 30'001);
    auto o3 = store.open(principal("c"), 30'002);
    auto o4 = store.open(principal("d"), 30'003);
    CHECK(store.size() == 3);
    CHECK_FALSE(store.find(o1.cookie, 30'004).has_value());
    CHECK(store.find(o2.cookie, 30'004).has_value());
    CHECK(store.find(o4.cookie, 30'004).has_value());
}

TEST_CASE("session cookies: attributes, Secure under TLS, removal") {
    const std::string v(64, 'c');
    CHECK(session_set_cookie(v, false) ==
          "guardia_session=" + v + "; Path=/; HttpOnly; SameSite=Strict");
    CHECK(session_set_cookie(v, true) ==
          "guardia_session=" + v + "; Path=/; HttpOnly; SameSite=Strict; Secure");
    CHECK(session_clear_cookie(false) ==
          "guardia_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
}

TEST_CASE("step_spans: starts open steps, ends close the latest open one, nesting, running") {
    auto row = [](std::string step, std::string event, std::int64_t ts,
                  std::optional<std::int64_t> dur = std::nullopt, std::string detail = {}) {
        guardia::store::AuditRow r;
        r.step = std::move(step);
        r.event = std::move(event);
        r.ts_ms = ts;
        r.duration_ms = dur;
        r.detail = std::move(detail);
        return r;
    };
    std::vector<guardia::store::AuditRow> rows{
        row("PRECHECK", "STEP_START", 10),     row("PRECHECK", "STEP_OK", 15, 5),
        row("", "NODE_CLAIMED", 16),           row("HEALTH", "STEP_START", 20),
        row("HEALTH", "STEP_FAILED", 40, 20, "503"), row("ROLLBACK", "STEP_START", 41),
        row("RESTORE", "STEP_START", 42),      row("RESTORE", "STEP_OK", 50, 8),
        row("ROLLBACK", "STEP_OK", 55, 14),    row("VERIFY", "STEP_START", 60),
        row("GHOST", "STEP_OK", 61, 1)};  // an end without a start is ignored
    const auto spans = step_spans(rows);
    REQUIRE(spans.size() == 5);
    CHECK(spans[0].step == "PRECHECK");
    CHECK(spans[0].status == "OK");
    CHECK(spans[0].started_ms == 10);
    CHECK(spans[0].duration_ms == std::optional<std::int64_t>(5));
    CHECK(spans[1].status == "FAIL");
    CHECK(spans[1].detail == "503");
    CHECK(spans[2].step == "ROLLBACK");
    CHECK(spans[2].duration_ms == std::optional<std::int64_t>(14));
    CHECK(spans[3].step == "RESTORE");
    CHECK(spans[3].status == "OK");
    CHECK(spans[4].step == "VERIFY");
    CHECK(spans[4].status == "RUNNING");
    CHECK_FALSE(spans[4].duration_ms.has_value());
}

TEST_CASE("sessions: alive() by key ends with sign-out, expiry, idle and eviction, keeps idle") {
    // What a live stream re-checks on each tick (review: a stream outlived its session).
    SessionLimits l;
    l.max_sessions = 2;
    l.max_age_ms = 10'000;
    l.idle_ms = 4'000;
    SessionStore store(l);
    auto a = store.open(principal("pm"), 0);
    const std::string key = SessionStore::key_of(a.cookie);
    CHECK(key != a.cookie);
    CHECK(store.alive(key, 1'000));
    CHECK_FALSE(store.alive(a.cookie, 1'000));  // the cookie itself is no key
    CHECK(store.alive(key, 3'999));
    CHECK_FALSE(store.alive(key, 4'000));  // idle: alive() did not reset the idle clock
    CHECK(store.size() == 0);
    auto b = store.open(principal("pm"), 5'000);
    CHECK(store.alive(SessionStore::key_of(b.cookie), 5'001));
    CHECK(store.close(b.cookie));
    CHECK_FALSE(store.alive(SessionStore::key_of(b.cookie), 5'002));  // signed out
    auto c = store.open(principal("pm"), 6'000);
    for (std::int64_t t = 9'000; t < 16'000; t += 3'000) REQUIRE(store.find(c.cookie, t));
    CHECK_FALSE(store.alive(SessionStore::key_of(c.cookie), 16'000));  // absolute end
    auto d = store.open(principal("x"), 20'000);
    store.open(principal("y"), 20'001);
    store.open(principal("z"), 20'002);
    CHECK_FALSE(store.alive(SessionStore::key_of(d.cookie), 20'003));  // evicted
}

TEST_CASE("sessions: one principal signing in again and again evicts only its own (review)") {
    SessionStore store;  // the service's limits: 1,000 in all, 16 per principal
    auto pm = store.open(principal("pm"), 1);
    std::vector<std::string> ops;
    for (int i = 0; i < 1500; ++i) ops.push_back(store.open(principal("ops"), 2 + i).cookie);
    REQUIRE(store.find(pm.cookie, 2'000).has_value());
    CHECK(store.size() == 17);
    CHECK_FALSE(store.find(ops[0], 2'000).has_value());
    CHECK_FALSE(store.find(ops[1500 - 17], 2'000).has_value());
    for (std::size_t i = 1500 - 16; i < 1500; ++i) CHECK(store.find(ops[i], 2'000).has_value());

    // At the store's cap, the principal holding the most loses its oldest, not a lone session.
    SessionLimits l;
    l.max_sessions = 4;
    l.max_per_principal = 3;
    SessionStore small(l);
    auto a = small.open(principal("a"), 10);
    auto b1 = small.open(principal("b"), 11);
    auto b2 = small.open(principal("b"), 12);
    auto c = small.open(principal("c"), 13);
    auto d = small.open(principal("d"), 14);  // full: b holds the most, b1 goes
    CHECK(small.size() == 4);
    CHECK_FALSE(small.find(b1.cookie, 15).has_value());
    for (const auto* o : {&a, &b2, &c, &d}) CHECK(small.find(o->cookie, 15).has_value());
    auto e = small.open(principal("e"), 16);  // one each: the oldest, a, goes
    CHECK_FALSE(small.find(a.cookie, 17).has_value());
    CHECK(small.find(e.cookie, 17).has_value());
}

TEST_CASE("behind a TLS proxy: Secure cookie and the Origin follow public_url (review)") {
    CHECK(url_origin("https://Guardia.Example.com:443/console") == "https://guardia.example.com");
    CHECK(url_origin("http://g.example:80") == "http://g.example");
    CHECK(url_origin("https://g.example:8443/") == "https://g.example:8443");
    CHECK(url_origin("http://[::1]:8080/x") == "http://[::1]:8080");
    CHECK(url_origin("https://[::1]") == "https://[::1]");
    CHECK(cookie_secure(false, "https://g.example"));
    CHECK(cookie_secure(true, ""));
    CHECK_FALSE(cookie_secure(false, ""));
    CHECK_FALSE(cookie_secure(false, "http://g.example"));
    const std::string csrf(64, 'a');
    const std::string pub = "https://Guardia.Example.com/base";
    auto r = request(bh::verb::post);  // Host: 127.0.0.1:8080, the plain listener behind the proxy
    r.set(csrf_header, csrf);
    CHECK(csrf_check(r, csrf, false, pub) == CsrfVerdict::ok);  // no Origin: the header decides
    r.set(bh::field::origin, "https://guardia.example.com");
    CHECK(csrf_check(r, csrf, false, pub) == CsrfVerdict::ok);
    CHECK(csrf_check(r, csrf, false) == CsrfVerdict::foreign_origin);  // before: http://<Host>
    for (const char* o : {"http://guardia.example.com", "http://127.0.0.1:8080",
                          "https://guardia.example.com:8443", "https://evil.example", "null"}) {
        r.set(bh::field::origin, o);
        CHECK_MESSAGE(csrf_check(r, csrf, false, pub) == CsrfVerdict::foreign_origin, o);
    }
    r.set(bh::field::host, "guardia.example.com");  // a proxy passing the Host on
    r.set(bh::field::origin, "http://guardia.example.com");
    CHECK(csrf_check(r, csrf, false, pub) == CsrfVerdict::foreign_origin);  // the wrong scheme
}

TEST_CASE("task cursors: (updated_ms, sr_id) round trip, old numbers accepted, junk refused") {
    const auto c = task_cursor(1733380000123, "SR-1.a/é");
    CHECK(c.starts_with("c1.1733380000123."));
    const auto back = parse_task_cursor(c);
    REQUIRE(back.has_value());
    CHECK(back->updated_ms == 1733380000123);
    CHECK(back->sr_id == "SR-1.a/é");
    const auto old = parse_task_cursor("1733380000123");  // the cursor before: updated_ms alone
    REQUIRE(old.has_value());
    CHECK(old->updated_ms == 1733380000123);
    CHECK(old->sr_id.empty());
    for (const char* bad : {"", "-1", "x", "1.5", "c1.", "c1.5", "c1.5.", "c1.x.41", "c1.5.4",
                            "c1.5.zz", "c1.-5.41", "c2.5.41", "12a"})
        CHECK_MESSAGE(!parse_task_cursor(bad).has_value(), bad);

    // The rows a page read from the cursor's millisecond on begins with, up to the cursor's task.
    std::vector<guardia::store::TaskRecord> rows(5);
    const std::pair<std::int64_t, const char*> keys[] = {
        {7, "SR-9"}, {5, "SR-8"}, {5, "SR-5"}, {5, "SR-3"}, {4, "SR-9"}};
    for (std::size_t i = 0; i < rows.size(); ++i) {
        rows[i].updated_ms = keys[i].first;
        rows[i].sr_id = keys[i].second;
    }
    TaskCursor at;
    at.updated_ms = 5;
    at.sr_id = "SR-5";
    CHECK(cursor_skip(at, rows) == 3);  // SR-9@7 (newer), SR-8@5, SR-5@5 itself
    at.sr_id = "SR-0";
    CHECK(cursor_skip(at, rows) == 4);
    at.updated_ms = 8;
    CHECK(cursor_skip(at, rows) == 0);
    at.sr_id.clear();  // an old numeric cursor: the store's strict before did it all
    at.updated_ms = 5;
    CHECK(cursor_skip(at, rows) == 0);
}
