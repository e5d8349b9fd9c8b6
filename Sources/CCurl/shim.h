// Debian's libcurl for the HTTPS activation client. curl_easy_setopt and curl_easy_getinfo
// are variadic, which Swift cannot call: these wrappers give each argument type a name.
#include <curl/curl.h>

typedef size_t (*lac_data_callback)(char *data, size_t size, size_t count, void *context);

static inline CURLcode lac_setopt_long(CURL *curl, CURLoption option, long value) {
  return curl_easy_setopt(curl, option, value);
}
static inline CURLcode lac_setopt_string(CURL *curl, CURLoption option, const char *value) {
  return curl_easy_setopt(curl, option, value);
}
static inline CURLcode lac_setopt_pointer(CURL *curl, CURLoption option, void *value) {
  return curl_easy_setopt(curl, option, value);
}
static inline CURLcode lac_setopt_callback(CURL *curl, CURLoption option, lac_data_callback value) {
  return curl_easy_setopt(curl, option, value);
}
static inline CURLcode lac_getinfo_long(CURL *curl, CURLINFO info, long *value) {
  return curl_easy_getinfo(curl, info, value);
}
