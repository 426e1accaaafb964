// The panel's only script besides htmx: forms with data-confirm ask before they submit
// (deleting a server or an account). Kept out of the templates so no inline script is needed.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
}, true);
