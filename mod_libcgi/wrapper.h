/* Everything bindgen needs from Apache httpd and APR. */
#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_main.h>
#include <http_protocol.h>
#include <http_request.h>
#include <util_script.h>
#include <util_filter.h>
#include <ap_mpm.h>
#include <scoreboard.h>
#include <apr_strings.h>
#include <apr_buckets.h>
#include <apr_tables.h>
#include <apr_pools.h>
#include <apr_shm.h>
#include <apr_optional_hooks.h>
