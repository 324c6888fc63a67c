# deploy/prometheus: the Prometheus and Alertmanager configurations, the rules, the alert unit
# tests and the generated SLO rules, checked with Debian's promtool (package prometheus) and
# amtool (prometheus-alertmanager), and the system Python 3.11+ (/usr/bin/python3, for tomllib).
# No server runs. A tool missing at configure time gives a test that fails and says which
# package to install (scripts/setup.sh installs them; then configure again), never a skip.
set(KILN_PROMETHEUS_DIR "${PROJECT_SOURCE_DIR}/deploy/prometheus")
find_program(KILN_PROMTOOL promtool)
find_program(KILN_AMTOOL amtool)
find_program(KILN_SYSTEM_PYTHON3 python3 PATHS /usr/bin NO_DEFAULT_PATH)

set(_kiln_missing_tool "${CMAKE_CURRENT_BINARY_DIR}/kiln_missing_tool.cmake")
file(WRITE "${_kiln_missing_tool}"
  "message(FATAL_ERROR \"\${PROGRAM} was not found when CMake configured this build: install the "
  "Debian package \${PACKAGE} (scripts/setup.sh does), then configure again (cmake --preset "
  "release)\")\n")

# kiln_prometheus_test(NAME <test> TOOL <variable> PROGRAM <name> PACKAGE <debian package>
#                      ARGS <args>...):
# runs the program found in <variable> (KILN_PROMTOOL, ...) with <args> in deploy/prometheus.
function(kiln_prometheus_test)
  cmake_parse_arguments(T "" "NAME;TOOL;PROGRAM;PACKAGE" "ARGS" ${ARGN})
  if(${T_TOOL})
    add_test(NAME ${T_NAME} COMMAND ${${T_TOOL}} ${T_ARGS}
             WORKING_DIRECTORY "${KILN_PROMETHEUS_DIR}")
  else()
    set(_program "${T_PROGRAM}")
    message(WARNING "${_program} not found (Debian package ${T_PACKAGE}): test ${T_NAME} will fail")
    add_test(NAME ${T_NAME} COMMAND ${CMAKE_COMMAND} "-DPROGRAM=${_program}" "-DPACKAGE=${T_PACKAGE}"
             -P "${_kiln_missing_tool}")
  endif()
  set_tests_properties(${T_NAME} PROPERTIES LABELS deploy)
endfunction()

# prometheus.yml is valid, and so are the three rule files it names.
kiln_prometheus_test(NAME prometheus_check_config TOOL KILN_PROMTOOL PROGRAM promtool PACKAGE prometheus
  ARGS check config prometheus.yml)
# Every rules file (a file added to rules/ but not yet to prometheus.yml too).
file(GLOB _kiln_rule_files CONFIGURE_DEPENDS "${KILN_PROMETHEUS_DIR}/rules/*.rules.yml")
kiln_prometheus_test(NAME prometheus_check_rules TOOL KILN_PROMTOOL PROGRAM promtool PACKAGE prometheus
  ARGS check rules ${_kiln_rule_files})
# Unit tests of the rules on hand-made series: recording rules (request rate, error ratio, batch
# size, queue/compute share, saturation, p50/p95/p99 from buckets, class PSI), and every alert
# both firing and not firing.
kiln_prometheus_test(NAME prometheus_rules_recording TOOL KILN_PROMTOOL PROGRAM promtool PACKAGE prometheus
  ARGS test rules tests/recording_test.yml)
kiln_prometheus_test(NAME prometheus_rules_alerts TOOL KILN_PROMTOOL PROGRAM promtool PACKAGE prometheus
  ARGS test rules tests/alerts_test.yml)
kiln_prometheus_test(NAME prometheus_rules_slo TOOL KILN_PROMTOOL PROGRAM promtool PACKAGE prometheus
  ARGS test rules tests/slo_test.yml)
# The drift alert on series recorded from a real kiln serve (in-distribution, then brighter).
kiln_prometheus_test(NAME prometheus_rules_drift_recorded TOOL KILN_PROMTOOL PROGRAM promtool
  PACKAGE prometheus ARGS test rules tests/drift_recorded_test.yml)
kiln_prometheus_test(NAME alertmanager_check_config TOOL KILN_AMTOOL PROGRAM amtool
  PACKAGE prometheus-alertmanager ARGS check-config alertmanager.yml)
# rules/kiln_slo.rules.yml is what generate_slo_rules.py writes from slo.toml (regenerated into a
# temporary directory and compared).
kiln_prometheus_test(NAME prometheus_slo_generated TOOL KILN_SYSTEM_PYTHON3 PROGRAM /usr/bin/python3 PACKAGE python3
  ARGS generate_slo_rules.py --check)
# Every alert has for, severity, summary, description, a runbook_url to its section of
# docs/monitoring.md (which exists), and promtool cases where it fires and where it does not.
kiln_prometheus_test(NAME prometheus_alert_coverage TOOL KILN_SYSTEM_PYTHON3 PROGRAM /usr/bin/python3 PACKAGE python3
  ARGS check_alerts.py --docs "${PROJECT_SOURCE_DIR}/docs/monitoring.md")
