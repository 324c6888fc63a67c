# The Grafana dashboard (deploy/grafana/), proven without Grafana by tests/deploy/dashboard_test.py
# (Python 3 standard library only):
#   deploy_grafana_structure  the fields Grafana requires, the provisioned data source uid
#                             everywhere, $__rate_interval in every rate().
#   deploy_grafana_schema     the JSON type-checked by tsc against the Dashboard type of Grafana's
#                             npm package @grafana/schema (pinned in dashboard_test.py); skipped
#                             (exit 77) when node_modules/ has no typescript and @grafana/schema.
#   deploy_grafana_live       a real `kiln serve`, prometheus and prometheus-node-exporter on
#                             loopback, real traffic, then every panel's every query through
#                             Prometheus's HTTP API (about 45 s on 2 cores).
set(KILN_DASHBOARD_TEST ${CMAKE_CURRENT_LIST_DIR}/dashboard_test.py)

add_test(NAME deploy_grafana_structure
         COMMAND /usr/bin/python3 ${KILN_DASHBOARD_TEST} --structure)
set_tests_properties(deploy_grafana_structure PROPERTIES LABELS deploy TIMEOUT 60)

add_test(NAME deploy_grafana_schema
         COMMAND /usr/bin/python3 ${KILN_DASHBOARD_TEST} --schema)
set_tests_properties(deploy_grafana_schema PROPERTIES LABELS deploy TIMEOUT 300
                     SKIP_RETURN_CODE 77)

add_test(NAME deploy_grafana_live
         COMMAND /usr/bin/python3 ${KILN_DASHBOARD_TEST} --live --kiln $<TARGET_FILE:kiln>
                 --data ${KILN_TEST_DATA})
set_tests_properties(deploy_grafana_live PROPERTIES LABELS deploy TIMEOUT 400
                     RUN_SERIAL TRUE)
