<?php
// A chosen status (?code=N, 404 by default), a custom header and two cookies:
// checks that the CGI Status line and repeated headers survive the front-end.
http_response_code((int)($_GET['code'] ?? 404));
header('X-Test: yes');
setcookie('a', '1');
setcookie('b', '2');
echo 'status page';
