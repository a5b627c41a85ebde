#include "detail/sqlite.hpp"

#include "guardia/store/database.hpp"

namespace guardia::store {
namespace {

class SqliteCategory final : public boost::system::error_category {
  public:
    const char* name() const noexcept override { return "sqlite"; }
    std::string message(int ev) const override { return sqlite3_errstr(ev); }
};

}  // namespace

const boost::system::error_category& sqlite_category() noexcept {
    static const SqliteCategory category;
    return category;
}

namespace detail {

Error sqlite_error(sqlite3* db, int rc, std::string_view what) {
    std::string message(what);
    message += ": ";
    // The connection's message is more specific ("no such table: x") than the code's text,
    // but only while it still describes this failure.
    message += db != nullptr && sqlite3_extended_errcode(db) == rc ? sqlite3_errmsg(db)
                                                                   : sqlite3_errstr(rc);
    return Error(make_sqlite_error(rc), std::move(message));
}

Result<Statement> Statement::prepare(sqlite3* db, std::string_view sql, bool persistent) {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                persistent ? SQLITE_PREPARE_PERSISTENT : 0, &raw, nullptr);
    StatementHandle stmt(raw);
    if (rc != SQLITE_OK) return sqlite_error(db, rc, "preparing statement");
    if (!stmt) return Error(errc::invalid_argument, "preparing statement: no SQL in it");
    return Statement(std::move(stmt));
}

void Statement::bind(int index, std::string_view text) noexcept {
    // A null pointer would bind SQL NULL; an empty string must stay an empty string. The
    // null destructor is SQLITE_STATIC (spelled without the macro's C cast).
    const char* data = text.data() != nullptr ? text.data() : "";
    note(sqlite3_bind_text64(stmt_.get(), index, data, text.size(), nullptr, SQLITE_UTF8));
}

void Statement::bind(int index, std::int64_t value) noexcept {
    note(sqlite3_bind_int64(stmt_.get(), index, value));
}

void Statement::bind(int index, std::optional<std::int64_t> value) noexcept {
    note(value ? sqlite3_bind_int64(stmt_.get(), index, *value)
               : sqlite3_bind_null(stmt_.get(), index));
}

int Statement::step() noexcept {
    if (bind_rc_ != SQLITE_OK) return bind_rc_;
    return sqlite3_step(stmt_.get());
}

void Statement::reset() noexcept {
    sqlite3_reset(stmt_.get());
    sqlite3_clear_bindings(stmt_.get());
    bind_rc_ = SQLITE_OK;
}

std::string Statement::text(int column) const {
    const auto* data = sqlite3_column_text(stmt_.get(), column);
    if (data == nullptr) return {};
    return std::string(reinterpret_cast<const char*>(data),
                       static_cast<std::size_t>(sqlite3_column_bytes(stmt_.get(), column)));
}

std::int64_t Statement::int64(int column) const noexcept {
    return sqlite3_column_int64(stmt_.get(), column);
}

std::optional<std::int64_t> Statement::optional_int64(int column) const noexcept {
    if (sqlite3_column_type(stmt_.get(), column) == SQLITE_NULL) return std::nullopt;
    return sqlite3_column_int64(stmt_.get(), column);
}

}  // namespace detail
}  // namespace guardia::store
