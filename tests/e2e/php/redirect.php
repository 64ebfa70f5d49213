<?php
// A Location header and nothing else: CGI turns that into a 302.
header('Location: /hello.php');
