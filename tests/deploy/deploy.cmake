# deploy/: the container image, the compose stack, nginx and Kubernetes (docs/deploy.md).
#   deploy_compose         docker-compose config on compose.yaml (+ the triton profile, + the
#                          local override) and the stack's promises on the normalized output
#   deploy_k8s             kustomize build of every kustomization, every manifest against the
#                          Kubernetes API schemas (kubernetes-validate) and the ServiceMonitor
#                          against its CRD schema; deploy_k8s_catches_breaks proves it would fail
#   deploy_nginx           Debian's nginx with deploy/nginx/nginx.conf in front of a real
#                          kiln serve on loopback (tests/deploy/nginx_test.cc), and requests/s
#                          through nginx vs direct at concurrency 32 (~1 min)
#   deploy_stack (slow)    builds the images with podman, brings the local compose stack up,
#                          sends traffic through nginx, checks Prometheus, tears it down
#                          (tests/deploy/stack_test.sh; root, podman; ~15 min with a cold image)
find_program(KILN_DOCKER_COMPOSE docker-compose)
if(KILN_DOCKER_COMPOSE)
  add_test(NAME deploy_compose COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/compose_test.py
           --docker-compose ${KILN_DOCKER_COMPOSE})
else()
  add_test(NAME deploy_compose COMMAND ${CMAKE_COMMAND} -DPROGRAM=docker-compose
           -DPACKAGE=docker-compose -P "${_kiln_missing_tool}")
endif()
set_tests_properties(deploy_compose PROPERTIES LABELS deploy TIMEOUT 120)

set(KILN_VENV_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python")
add_test(NAME deploy_k8s COMMAND ${KILN_VENV_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/k8s_test.py)
add_test(NAME deploy_k8s_catches_breaks
         COMMAND ${KILN_VENV_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/k8s_test.py --self-test)
set_tests_properties(deploy_k8s deploy_k8s_catches_breaks PROPERTIES LABELS deploy TIMEOUT 180)

add_executable(nginx_test nginx_test.cc)
kiln_target_defaults(nginx_test)
target_link_libraries(nginx_test PRIVATE GTest::gtest_main kiln_serve_test_client
  kiln_serve_grpc_proto kiln_data)
target_compile_definitions(nginx_test PRIVATE "KILN_SOURCE_DIR=\"${PROJECT_SOURCE_DIR}\"")
add_dependencies(nginx_test kiln)
# One ctest entry for the whole binary: kiln and nginx start once for every case. Run alone,
# so that the requests/s it prints are not measured beside another test.
add_test(NAME deploy_nginx COMMAND nginx_test)
set_tests_properties(deploy_nginx PROPERTIES LABELS deploy TIMEOUT 300 RUN_SERIAL TRUE)

add_test(NAME deploy_stack COMMAND ${CMAKE_CURRENT_LIST_DIR}/stack_test.sh
         --kiln $<TARGET_FILE:kiln> --data ${KILN_TEST_DATA})
set_tests_properties(deploy_stack PROPERTIES LABELS slow TIMEOUT 3600 RUN_SERIAL TRUE)
