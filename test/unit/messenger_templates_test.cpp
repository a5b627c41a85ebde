// The ready messenger templates (conf/messengers/*.json): each file goes through the real
// configuration parsers (engine configuration, then its "notifications" section), covers
// every event, and renders for each one into the JSON shape its messenger accepts, with every
// placeholder naming a field the event really carries.
#include "guardia/deploy/engine_config.hpp"
#include "guardia/service/notifier.hpp"

#include <doctest/doctest.h>
#include <boost/json/parse.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>

using namespace guardia;
using namespace guardia::service;
namespace json = boost::json;

namespace {

std::string read_text(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    REQUIRE(in);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The fields every event carries (Coordinator's notify(): the task, its links) plus the
// notifier's own (event, delivery_id, ts_ms, summary). Event-specific fields (tier, counts,
// reason's meaning) vary: a template shared by several events uses only these.
json::object context_for(std::string_view event) {
    json::object f{{"sr_id", "SR-42"},
                   {"status", "DEPLOYING"},
                   {"inst_id", "INST-1"},
                   {"system_name", "billing"},
                   {"requester", "alice"},
                   {"approver", "bob"},
                   {"rollout_id", "SR-42-20261205T040000Z-1-1"},
                   {"reason", ""},
                   {"created_ms", 1},
                   {"updated_ms", 2}};
    add_console_links(f, "https://guardia.example.com");
    f["event"] = event;
    f["delivery_id"] = "d-1";
    f["ts_ms"] = 3;
    f["summary"] = event_summary(event, f);
    return f;
}

bool resolves(const json::object& context, std::string_view path) {
    const json::object* obj = &context;
    while (true) {
        const auto dot = path.find('.');
        const auto* v = obj->if_contains(path.substr(0, dot));
        if (!v) return false;
        if (dot == std::string_view::npos) return true;
        if (!v->is_object()) return false;
        obj = &v->get_object();
        path.remove_prefix(dot + 1);
    }
}

// Every "{{name}}" in the template's strings.
void placeholders(const json::value& v, std::set<std::string>& out) {
    if (v.is_string()) {
        const std::string_view s = v.get_string();
        for (auto open = s.find("{{"); open != std::string_view::npos; open = s.find("{{", open + 2)) {
            const auto close = s.find("}}", open);
            REQUIRE(close != std::string_view::npos);
            std::string name(s.substr(open + 2, close - open - 2));
            while (!name.empty() && name.front() == ' ') name.erase(0, 1);
            while (!name.empty() && name.back() == ' ') name.pop_back();
            out.insert(name);
        }
    } else if (v.is_array()) {
        for (const auto& x : v.get_array()) placeholders(x, out);
    } else if (v.is_object()) {
        for (const auto& kv : v.get_object()) placeholders(kv.value(), out);
    }
}

// Renders every event through `file`; `check` judges each rendered body.
template <class Check>
void check_file(const std::string& file, Check check) {
    const auto path = std::filesystem::path(GUARDIA_SOURCE_ROOT) / "conf" / "messengers" / file;
    CAPTURE(path.string());
    auto engine = deploy::parse_engine_config(read_text(path), path.string());
    REQUIRE_MESSAGE(engine.has_value(), engine.error().message);
    auto cfg = parse_notifier_config(engine->notifications, path.string());
    REQUIRE_MESSAGE(cfg.has_value(), cfg.error().message);
    REQUIRE_FALSE(cfg->webhooks.empty());
    CHECK(cfg->signing_secret_file == "/etc/guardia/webhook.secret");
    for (const auto& hook : cfg->webhooks) {
        REQUIRE(hook.body_template.is_object());
        std::set<std::string> names;
        placeholders(hook.body_template, names);
        CHECK(names.count("review_url") == 1);  // every message links to the PM review page
        for (const auto& ev : hook.events) {
            const auto context = context_for(ev);
            for (const auto& n : names) {
                CAPTURE(ev);
                CAPTURE(n);
                CHECK(resolves(context, n));
            }
        }
    }
    for (const auto ev : known_events()) {
        CAPTURE(ev);
        std::size_t subscribed = 0;
        for (const auto& hook : cfg->webhooks) {
            if (!hook.subscribes(ev)) continue;
            ++subscribed;
            json::object fields = context_for(ev);
            const auto body = render_body(hook, ev, "d-1", 3, fields);
            CHECK(body.find("{{") == std::string::npos);
            const auto parsed = json::parse(body);  // throws if not JSON
            REQUIRE(parsed.is_object());
            CHECK(body.find("https://guardia.example.com/ui/#/sr/SR-42/review") !=
                  std::string::npos);
            CHECK(body.find(event_summary(ev, fields)) != std::string::npos);
            check(parsed.get_object());
        }
        CHECK(subscribed >= 1);  // every event reaches the messenger
    }
}

const json::value& at(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    REQUIRE_MESSAGE(v, std::string(key));
    return *v;
}

}  // namespace

TEST_CASE("conf/messengers/slack.json: text and blocks for every event") {
    check_file("slack.json", [](const json::object& msg) {
        CHECK(at(msg, "text").is_string());
        CHECK_FALSE(at(msg, "text").get_string().empty());
        const auto& blocks = at(msg, "blocks");
        REQUIRE(blocks.is_array());
        REQUIRE_FALSE(blocks.get_array().empty());
        bool has_button = false;
        for (const auto& b : blocks.get_array()) {
            REQUIRE(b.is_object());
            CHECK(at(b.get_object(), "type").is_string());
            if (at(b.get_object(), "type") == json::value("actions"))
                for (const auto& e : at(b.get_object(), "elements").get_array())
                    has_button = has_button || (at(e.get_object(), "type") == json::value("button") &&
                                                at(e.get_object(), "url").is_string());
        }
        CHECK(has_button);
    });
}

TEST_CASE("conf/messengers/teams.json: a message with an Adaptive Card for every event") {
    check_file("teams.json", [](const json::object& msg) {
        CHECK(at(msg, "type") == json::value("message"));
        const auto& atts = at(msg, "attachments");
        REQUIRE(atts.is_array());
        REQUIRE(atts.get_array().size() == 1);
        const auto& att = atts.get_array()[0].get_object();
        CHECK(at(att, "contentType") == json::value("application/vnd.microsoft.card.adaptive"));
        const auto& card = at(att, "content").get_object();
        CHECK(at(card, "type") == json::value("AdaptiveCard"));
        CHECK(at(card, "version").is_string());
        CHECK(at(card, "body").is_array());
        bool opens_url = false;
        for (const auto& a : at(card, "actions").get_array())
            opens_url = opens_url || (at(a.get_object(), "type") == json::value("Action.OpenUrl") &&
                                      at(a.get_object(), "url").is_string());
        CHECK(opens_url);
    });
}

TEST_CASE("conf/messengers/mattermost.json: text and Slack-compatible attachments for every event") {
    check_file("mattermost.json", [](const json::object& msg) {
        CHECK(at(msg, "text").is_string());
        const auto& atts = at(msg, "attachments");
        REQUIRE(atts.is_array());
        REQUIRE_FALSE(atts.get_array().empty());
        for (const auto& a : atts.get_array()) {
            const auto& att = a.get_object();
            CHECK(at(att, "fallback").is_string());
            CHECK(at(att, "title_link").is_string());
            CHECK(at(att, "fields").is_array());
        }
    });
}

TEST_CASE("messenger markup: Slack and Mattermost get fields escaped, links intact (review)") {
    // Attack: an SR title, a reason or a summary holding Slack markup reached the channel as
    // markup: "<!channel>" notified everyone, "<https://evil|click>" was a disguised link.
    const std::string hostile = "<!channel> <@U123> <https://evil.example|click> & co";
    for (const char* file : {"slack.json", "mattermost.json"}) {
        CAPTURE(file);
        const auto path = std::filesystem::path(GUARDIA_SOURCE_ROOT) / "conf" / "messengers" / file;
        auto engine = deploy::parse_engine_config(read_text(path), path.string());
        REQUIRE(engine.has_value());
        auto cfg = parse_notifier_config(engine->notifications, path.string());
        REQUIRE(cfg.has_value());
        for (const auto& hook : cfg->webhooks) {
            CHECK(hook.markup == WebhookConfig::Markup::slack);
            json::object fields = context_for(hook.events.front());
            fields["summary"] = hostile;
            fields["system_name"] = hostile;
            fields["status"] = hostile;
            const auto body = render_body(hook, hook.events.front(), "d-1", 3, fields);
            CAPTURE(body);
            CHECK(json::parse(body).is_object());
            for (const char* markup : {"<!channel>", "<@U123>", "<https://evil.example|click>"})
                CHECK(body.find(markup) == std::string::npos);
            CHECK(body.find("&lt;!channel&gt; &lt;@U123&gt; &lt;https://evil.example|click&gt; "
                            "&amp; co") != std::string::npos);
            // Link fields are URLs, not text: kept as they are.
            CHECK(body.find("\"https://guardia.example.com/ui/#/sr/SR-42") != std::string::npos);
        }
    }
}

TEST_CASE("render_template: markup slack escapes field text only, never link fields") {
    const auto tmpl = json::parse(
        R"({"text": "*{{t}}* <{{u}}|open>", "whole": "{{t}}", "url": "{{u}}", "title_link": "{{u}}",
            "n": "{{n}}", "list": ["{{t}}"]})");
    const json::object ctx{{"t", "<!here> a&b"}, {"u", "https://x.example/a?b=1&c=<2>"}, {"n", 5}};
    const auto out = render_template(tmpl, ctx, WebhookConfig::Markup::slack).as_object();
    CHECK(out.at("text") == json::value("*&lt;!here&gt; a&amp;b* <https://x.example/a?b=1&amp;c=&lt;2&gt;|open>"));
    CHECK(out.at("whole") == json::value("&lt;!here&gt; a&amp;b"));
    CHECK(out.at("url") == json::value("https://x.example/a?b=1&c=<2>"));
    CHECK(out.at("title_link") == json::value("https://x.example/a?b=1&c=<2>"));
    CHECK(out.at("n") == json::value(5));
    CHECK(out.at("list").as_array()[0] == json::value("&lt;!here&gt; a&amp;b"));
    const auto plain = render_template(tmpl, ctx).as_object();  // none: as before
    CHECK(plain.at("whole") == json::value("<!here> a&b"));
    CHECK(slack_escape("a<b>&c") == "a&lt;b&gt;&amp;c");
}

TEST_CASE("webhook markup: slack by default for hooks.slack.com, set by \"markup\", bad value named") {
    const auto parse = [](std::string_view url, std::string_view markup) {
        std::string text = R"({"webhooks": [{"event": "pm_review_needed", "url": ")";
        text += url;
        text += '"';
        if (!markup.empty()) {
            text += R"(, "markup": )";
            text += markup;
        }
        text += "}]}";
        return parse_notifier_config(json::parse(text), "g.json");
    };
    using M = WebhookConfig::Markup;
    auto a = parse("https://hooks.slack.com/services/T/B/X", "");
    REQUIRE(a.has_value());
    CHECK(a->webhooks[0].markup == M::slack);
    auto b = parse("https://mm.example.com/hooks/x", "");
    REQUIRE(b.has_value());
    CHECK(b->webhooks[0].markup == M::none);
    auto c = parse("https://mm.example.com/hooks/x", R"("slack")");
    REQUIRE(c.has_value());
    CHECK(c->webhooks[0].markup == M::slack);
    auto d = parse("https://hooks.slack.com/services/T/B/X", R"("none")");
    REQUIRE(d.has_value());
    CHECK(d->webhooks[0].markup == M::none);
    for (const char* bad : {R"("html")", "1", R"("")"}) {
        auto e = parse("https://mm.example.com/hooks/x", bad);
        REQUIRE_FALSE(e.has_value());
        CHECK(e.error().message.find("g.json: notifications.webhooks[0].markup") != std::string::npos);
    }
}
