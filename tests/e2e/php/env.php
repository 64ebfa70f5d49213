<?php
// The CGI params this page received, as JSON, so a test can compare what each
// front-end sends: the CGI/FastCGI names from $_SERVER (php-fpm adds its own,
// such as PHP_SELF and REQUEST_TIME, which are left out), every HTTP_* header,
// the parsed query and form, and the length and md5 of the raw body.
const CGI_PARAMS = [
    'CONTENT_LENGTH', 'CONTENT_TYPE', 'DOCUMENT_ROOT', 'DOCUMENT_URI',
    'GATEWAY_INTERFACE', 'HTTPS', 'PATH_INFO', 'QUERY_STRING', 'REDIRECT_STATUS',
    'REMOTE_ADDR', 'REQUEST_METHOD', 'REQUEST_SCHEME', 'REQUEST_URI',
    'SCRIPT_FILENAME', 'SCRIPT_NAME', 'SERVER_NAME', 'SERVER_PORT',
    'SERVER_PROTOCOL',
];

$params = [];
foreach ($_SERVER as $name => $value) {
    if (in_array($name, CGI_PARAMS, true) || str_starts_with($name, 'HTTP_')) {
        $params[$name] = $value;
    }
}
$body = file_get_contents('php://input');
$report = $params + [
    '_GET' => $_GET,
    '_POST' => $_POST,
    'body_len' => strlen($body),
    'body_md5' => md5($body),
];
ksort($report);
header('Content-Type: application/json');
echo json_encode($report, JSON_UNESCAPED_SLASHES);
