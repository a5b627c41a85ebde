// Boost.JSON compiled from its headers into the fuzz targets, so that its code is
// instrumented for coverage and sanitizers (libboost_json.so is not).
#include <boost/json/src.hpp>
